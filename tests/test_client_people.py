"""``python -m client people`` (client/people.py): the request it sends, the lines it prints, the
boxes it draws (on frames turned upright as the server turns them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client import people

ROTATED = "dc__video_90.mov"  # stored 568x320, shown 320x568


def test_the_request_carries_the_boxes_file_as_compact_json_and_the_options(tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"2.0": [[1, 2, 30, 40]]}, indent=2))
    args = people.build_parser().parse_args(["v.mp4", "--boxes", str(boxes), "--threshold", "0.3", "--topk", "2"])
    assert people.request_fields(args) == {"boxes": '{"2.0":[[1,2,30,40]]}', "threshold": "0.3", "topk": "2"}
    assert args.model == people.DETECTION_MODEL
    (tmp_path / "bad.json").write_text("{1")
    with pytest.raises(people.ClientError, match="cannot read boxes"):
        people.request_fields(people.build_parser().parse_args(["v.mp4", "--boxes", str(tmp_path / "bad.json")]))


def test_one_json_line_per_keyframe():
    answer = {"keyframes": [{"time": 1.0, "window": [0.5, 1.5], "persons": []},
                            {"time": 2.0, "window": [1.5, 2.5], "persons": [{"box": [0, 0, 1, 1], "actions": []}]}]}
    lines = list(people.keyframe_lines(answer))
    assert [json.loads(line)["time"] for line in lines] == [1.0, 2.0] and all("\n" not in line for line in lines)


def test_boxes_and_labels_are_drawn_where_the_answer_puts_them():
    image = np.zeros((120, 200, 3), np.uint8)
    person = {"box": [50, 60, 150, 110], "score": 0.9, "actions": [{"label": "stand", "index": 11, "probability": 0.8}]}
    drawn = people.draw_persons(image, [person])
    assert people.person_label(person) == "0.90 stand"
    assert drawn[85, 50].any() and drawn[85, 150].any()  # the box's left and right edges
    assert not drawn[85, 100].any() and not drawn[10, 10].any()  # its inside and the far corner stay black


def test_the_contact_sheet_shows_the_upright_frame(shared_videos, tmp_path):
    """A rotated phone video is drawn upright (320 wide, 568 tall), as the server's boxes are given."""
    from PIL import Image

    frame = next(people._frames(shared_videos / ROTATED))[1]
    assert people.upright(frame).shape == (568, 320, 3)
    answer = {"keyframes": [{"time": 0.05, "window": [0, 0.1], "persons": [
        {"box": [10, 300, 310, 560], "actions": [{"label": "stand", "index": 11, "probability": 0.9}]}]}]}
    assert people.render_sheet(shared_videos / ROTATED, answer, tmp_path / "sheet.png") == 1
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.size == (people.SHEET_WIDTH, round(568 * people.SHEET_WIDTH / 320))
    written = people.render_video(shared_videos / ROTATED, answer, tmp_path / "drawn.mp4")
    assert written == 3 and (tmp_path / "drawn.mp4").stat().st_size > 0

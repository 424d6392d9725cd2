# >>> slowfast-serve: TorchServe config >>>
# Appended to .venv/bin/activate by `make install` (from client/activate-hook.sh; re-running replaces it).
# TorchServe 0.12's launcher reads a config file only from TS_CONFIG_FILE or --ts-config (the
# variable wins); without one, `torchserve --start` exits ("Missing mandatory parameter
# --model-store"), and given --model-store it runs on TorchServe's own defaults. So activating this
# venv points TorchServe at the repo's config.properties; `deactivate` restores the previous value.
if [ -n "${BASH_VERSION:-}" ]; then
    _slowfast_activate="${BASH_SOURCE[0]}"
elif [ -n "${ZSH_VERSION:-}" ]; then
    eval '_slowfast_activate="${(%):-%x}"'
else
    _slowfast_activate="$VIRTUAL_ENV/bin/activate"
fi
# The repo is two levels above this script as it was sourced (a symlinked .venv keeps its repo).
_slowfast_repo="$(cd "$(dirname "$_slowfast_activate")/../.." 2>/dev/null && pwd)"
if [ -n "$_slowfast_repo" ] && [ -f "$_slowfast_repo/config.properties" ]; then
    if [ -z "${_SLOWFAST_OLD_TS_CONFIG_FILE+x}" ]; then
        _SLOWFAST_OLD_TS_CONFIG_FILE="${TS_CONFIG_FILE:-}"
    fi
    TS_CONFIG_FILE="$_slowfast_repo/config.properties"
    export TS_CONFIG_FILE
    echo "slowfast-serve: TS_CONFIG_FILE=$TS_CONFIG_FILE (torchserve --start reads it; it overrides --ts-config)" >&2
    eval "_slowfast_venv_$(declare -f deactivate)"
    deactivate () {
        if [ -n "${_SLOWFAST_OLD_TS_CONFIG_FILE+x}" ]; then
            if [ -n "$_SLOWFAST_OLD_TS_CONFIG_FILE" ]; then
                TS_CONFIG_FILE="$_SLOWFAST_OLD_TS_CONFIG_FILE"
                export TS_CONFIG_FILE
            else
                unset TS_CONFIG_FILE
            fi
            unset _SLOWFAST_OLD_TS_CONFIG_FILE
        fi
        _slowfast_venv_deactivate "$@"
        if [ ! "${1:-}" = "nondestructive" ]; then
            unset -f _slowfast_venv_deactivate
        fi
    }
fi
unset _slowfast_activate _slowfast_repo
# <<< slowfast-serve: TorchServe config <<<

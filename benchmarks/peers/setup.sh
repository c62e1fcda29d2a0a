#!/usr/bin/env bash
# Create the peers' virtual environments (outside the repository) for benchmarks/peers/race.py.
# Idempotent: an environment whose marker file exists is left alone. Prints install times and sizes.
#
#   bash benchmarks/peers/setup.sh            # all three peers
#   bash benchmarks/peers/setup.sh st hf      # some of them: ag (AutoGluon), st (sentence-transformers), hf
#
# PEER_VENVS (default /work/peer-venvs) is where they go; PYTHON (default python3.11) creates them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${PEER_VENVS:-/work/peer-venvs}"
py="${PYTHON:-python3.11}"
peers=("$@"); [ ${#peers[@]} -eq 0 ] && peers=(ag st hf)
mkdir -p "$root"

install_peer() {  # name constraints packages...
    local name="$1" cons="$2"; shift 2
    local pip_env=()
    # AutoGluon needs torch 2.13.0 from PyPI. Without this, pip's find-links (/opt/wheels, from PIP_FIND_LINKS and
    # the user pip.conf) offers torch-2.13.0+cpu, which satisfies ==2.13.0 but cannot import PyPI's torchvision 0.28.
    [ "$name" = ag ] && pip_env=(env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null)
    local venv="$root/$name" marker="$root/$name/.peer-installed"
    if [ -f "$marker" ]; then echo "[$name] already installed ($(cat "$marker"))"; return; fi
    local t0=$SECONDS
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip 2>&1 | { grep -v "^WARNING: Location .file:" || true; }
    "${pip_env[@]}" "$venv/bin/pip" install -q -c "$here/$cons" "$@" 2>&1 | { grep -v "^WARNING: Location .file:" || true; }
    "$venv/bin/pip" freeze > "$venv/peer-freeze.txt"
    echo "installed in $((SECONDS - t0)) s on $(date -u +%F)" > "$marker"
    echo "[$name] $(cat "$marker")"
}

for p in "${peers[@]}"; do
    case "$p" in
        ag) install_peer ag constraints-ag.txt torch torchvision autogluon.multimodal psutil ;;
        st) install_peer st constraints-st.txt "sentence-transformers[train,image]==6.3.0" torchvision timm psutil ;;
        hf) install_peer hf constraints-hf.txt torch transformers accelerate scikit-learn pandas psutil ;;
        *) echo "unknown peer '$p' (ag, st, hf)" >&2; exit 2 ;;
    esac
done
for p in "${peers[@]}"; do du -sh "$root/$p"; done

#!/usr/bin/env bash
# Build .whl/: the wheels benchmarks/gpu_check.py needs on the GPU machine, which has no internet.
#
# On the GPU machine (python3 3.12, torch/transformers/numpy/pandas/pyarrow/aiohttp/... there already):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# --target puts only these packages in /tmp/site; PYTHONPATH makes them shadow the machine's own copies
# of the same names (typing-extensions), nothing else.
# Ray workers find /tmp/site only through the inherited PYTHONPATH: a runtime_env whose env_vars sets
# PYTHONPATH must keep it ("...:${PYTHONPATH}", which Ray expands), or the worker dies on `import ray`.
# Pass .whl as a carried path (it is git-ignored): carry [".whl"], about 45 MiB.
#
# What goes in (the third-party modules that gpu_check.py -> conftest, jobs.ppo, actors.*, batray.* import,
# less what the GPU machine has):
#   ray 2.60.0        stripped (below) to fit the transfer limit; core, placement groups, ray.data, ray.train
#   deepspeed 0.19.8  built here from the sdist with DS_BUILD_OPS=0: pure python (py3-none-any), ops JIT-build
#   pydantic (+ pydantic-core, annotated-types, typing-inspection, typing-extensions >= 4.16 that it needs)
#   jsonschema (+ referencing, rpds-py, jsonschema-specifications): ray.runtime_env imports it at import time
#   hjson: deepspeed imports it at import time
# Not needed on that path at module level: openai, fastapi, starlette, uvicorn, sqlalchemy, matplotlib.
#
# Usage: bash benchmarks/gpu_payload.sh            # cp312 wheels into .whl/ (replaced)
#        PYVER=3.11 WHL_DIR=/tmp/whl311 bash benchmarks/gpu_payload.sh   # the same recipe for cp311 (a local test)
# Needs: the project's venv (PY, with torch: deepspeed's setup.py imports it) and PyPI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
PYVER="${PYVER:-3.12}"
WHL_DIR="${WHL_DIR:-$ROOT/.whl}"
MAX_MIB="${MAX_MIB:-50}"

RAY=ray==2.60.0
DEEPSPEED=deepspeed==0.19.8
# Pinned to the versions the project's venv runs; pydantic 2.14.4 pins pydantic-core==2.50.5 exactly.
OTHERS=(
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  hjson==3.1.0
)
PLATFORM=(--only-binary=:all: --python-version "$PYVER" --implementation cp
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --no-deps)

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
rm -rf "$WHL_DIR"
mkdir -p "$WHL_DIR"

echo "== download ($PYVER)"
"$PY" -m pip download -q "${PLATFORM[@]}" -d "$TMP/ray" "$RAY"
"$PY" -m pip download -q "${PLATFORM[@]}" -d "$WHL_DIR" "${OTHERS[@]}"

echo "== strip ray"
# Removed: the Java jar, the dashboard's web front end (its python modules stay; gpu_check runs Ray with
# include_dashboard=False), RLlib, Serve, Ray LLM, examples, test folders and source maps. Kept, among all
# the rest: _raylet.so, core/src/ray/gcs/gcs_server, core/src/ray/raylet/raylet, core/libjemalloc.so, the
# runtime-env agent and its vendored aiohttp (ray/_private/runtime_env/agent/thirdparty_files).
"$PY" - "$TMP/ray"/ray-*.whl "$WHL_DIR" <<'EOF'
import base64, hashlib, os, shutil, stat, sys, tempfile, zipfile
from pathlib import Path

src, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
REMOVE_DIRS = ["ray/jars", "ray/dashboard/client/build", "ray/rllib", "ray/serve", "ray/llm",
               "ray/tune/examples", "ray/train/examples", "ray/train/v2/examples", "ray/air/examples"]
REMOVE_DIR_NAMES = {"tests", "__pycache__"}
REMOVE_SUFFIXES = (".js.map",)
KEEP = ["ray/_raylet.so", "ray/core/src/ray/gcs/gcs_server", "ray/core/src/ray/raylet/raylet",
        "ray/core/libjemalloc.so", "ray/_private/runtime_env/agent/main.py",
        "ray/_private/runtime_env/agent/thirdparty_files/aiohttp/__init__.py"]

work = Path(tempfile.mkdtemp())
with zipfile.ZipFile(src) as z:
    z.extractall(work)
    modes = {i.filename: (i.external_attr >> 16) & 0o7777 for i in z.infolist()}
for d in REMOVE_DIRS:
    shutil.rmtree(work / d)
for p in sorted(work.rglob("*"), reverse=True):
    if (p.is_dir() and p.name in REMOVE_DIR_NAMES) or (p.is_file() and p.name.endswith(REMOVE_SUFFIXES)):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
missing = [k for k in KEEP if not (work / k).is_file()]
assert not missing, f"stripped too much: {missing}"
dist_info = next(work.glob("ray-*.dist-info"))
ep = dist_info / "entry_points.txt"  # the `serve` command points into the removed ray.serve
ep.write_text("".join(l for l in ep.read_text().splitlines(True) if not l.startswith(("serve ", "rllib "))))

files = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
record = f"{dist_info.name}/RECORD"
rows = []
for f in files:
    if f == record:
        continue
    data = (work / f).read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    rows.append(f"{f},sha256={digest},{len(data)}")
rows.append(f"{record},,")
(work / record).write_text("\n".join(rows) + "\n")

out = out_dir / src.name
dist = [f for f in files if f.startswith(dist_info.name + "/")]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for f in [f for f in files if f not in dist] + dist:  # .dist-info last, as the wheel spec asks
        info = zipfile.ZipInfo(f, date_time=(2020, 1, 1, 0, 0, 0))
        mode = modes.get(f) or stat.S_IMODE((work / f).stat().st_mode)
        info.external_attr = (stat.S_IFREG | mode) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, (work / f).read_bytes(), compresslevel=9)
shutil.rmtree(work)
print(f"{src.name}: {src.stat().st_size / 2**20:.1f} MiB -> {out.stat().st_size / 2**20:.1f} MiB")
EOF

echo "== build $DEEPSPEED (DS_BUILD_OPS=0)"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir "$DEEPSPEED" -w "$TMP/ds"
ds_wheel="$(ls "$TMP"/ds/deepspeed-*.whl)"
case "$ds_wheel" in
  *-py3-none-any.whl) cp "$ds_wheel" "$WHL_DIR/" ;;
  *) echo "deepspeed wheel is not pure python: $ds_wheel" >&2; exit 1 ;;
esac

echo "== $WHL_DIR"
ls -l "$WHL_DIR"
total=$(cat "$WHL_DIR"/*.whl | wc -c)
echo "total: $total bytes ($((total / 1048576)) MiB)"
if (( total > MAX_MIB * 1048576 )); then
  echo "over ${MAX_MIB} MiB" >&2
  exit 1
fi

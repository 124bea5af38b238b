#!/usr/bin/env bash
# Wheels a GPU machine without a package registry needs to run the Triton and Locust experiments
# (Python 3.12, x86_64): nvidia-pytriton (tritonserver + Python backend), tritonclient, Locust and their
# compiled dependencies. Written to DIR (default .whl/); carry that folder to the machine and install with
#   python3 -m pip install --no-index --no-deps --target /tmp/site DIR/*.whl && export PYTHONPATH=/tmp/site:$PWD
# The pytriton wheel is slimmed to the Python 3.12 stub (other versions' stubs and the bundled libpython3.13,
# used only by the 3.13 stub, are dropped) so that everything fits a 64 MiB transfer. BUNDLE=0 keeps the loose
# wheels instead of DIR/bundle.tar.xz.
set -euo pipefail
DIR=${1:-.whl}
PY=${PY:-3.12}
mkdir -p "$DIR"
get() {
    python3 -m pip download -q --only-binary=:all: --python-version "$PY" --implementation cp \
        --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$DIR" "$@"
}
get --no-deps nvidia-pytriton==0.7.0 tritonclient==2.73.0 python-rapidjson
get "locust==$(python3 -c 'import locust; print(locust.__version__)' 2>/dev/null || echo 2.23.1)"
python3 - "$DIR" "$PY" <<'PYEOF'
import re, sys, zipfile
from pathlib import Path
folder, keep = Path(sys.argv[1]), sys.argv[2]
for wheel in folder.glob("nvidia_pytriton-*.whl"):
    def drop(name: str) -> bool:
        stub = re.search(r"python_backend_stubs/(\d+\.\d+)/", name)
        return "libpython3-" in name or bool(stub and stub.group(1) != keep)
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if drop(info.filename):
                continue
            data = zin.read(info.filename)
            if info.filename.endswith("RECORD"):
                data = b"\n".join(l for l in data.split(b"\n") if not drop(l.decode()))
            zout.writestr(info, data)
    slim.replace(wheel)
PYEOF
# tritonclient's wheel carries perf_analyzer binaries (too big to carry) and pins grpcio/protobuf versions the
# device lacks: keep only its pure-Python package, unpacked under DIR/site (device_suite.sh copies it in place).
python3 - "$DIR" <<'PYEOF'
import sys, zipfile
from pathlib import Path
folder = Path(sys.argv[1])
for wheel in folder.glob("tritonclient-*.whl"):
    with zipfile.ZipFile(wheel) as zin:
        for name in zin.namelist():
            if name.startswith("tritonclient/") and not name.endswith((".so", "/perf_analyzer", "/perf_client")):
                zin.extract(name, folder / "site")
    wheel.unlink()
PYEOF
# One xz tarball instead of the wheels: 51 MB of wheels become 34 MB, and a device call carries the working tree
# (tracked results and logs included) plus the carried folders within 64 MiB. scripts/device_suite.sh unpacks it.
# The wheels go in uncompressed (ZIP_STORED, still valid wheels): xz then compresses their contents as one stream.
if [ "${BUNDLE:-1}" = 1 ]; then
    python3 - "$DIR" <<'PYEOF'
import sys, zipfile
from pathlib import Path
for wheel in Path(sys.argv[1]).glob("*.whl"):
    stored = wheel.with_suffix(".stored")
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            info.compress_type = zipfile.ZIP_STORED
            zout.writestr(info, data)
    stored.replace(wheel)
PYEOF
    (cd "$DIR" && tar cf - ./*.whl site | xz -9 -T0 > bundle.tar.xz.part && mv bundle.tar.xz.part bundle.tar.xz \
        && rm -rf ./*.whl site)
fi
du -sh "$DIR"

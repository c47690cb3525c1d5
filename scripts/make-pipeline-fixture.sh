#!/usr/bin/env bash
# Regenerates fixtures/pipeline/: the correct pipeline the defect catalogue mutates
# (fixtures/defects/), as a pipeline would hand it to `cdcheck run --manifests`:
# several files, several documents each. The certificate is made to last 100 years
# so the fixture never expires under the `certificate` check.
#   usage: scripts/make-pipeline-fixture.sh [path/to/cdcheck]
set -euo pipefail
cd "$(dirname "$0")/.."
cdcheck="${1:-./target/debug/cdcheck}"
out=fixtures/pipeline
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
rm -rf "$out"; mkdir -p "$out/current" "$out/feature"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500 \
  -subj /CN=shop.boutique.test -addext subjectAltName=DNS:shop.boutique.test,DNS:*.boutique.test \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null

common=(--env shop --no-loadgenerator --tls-cert "$work/tls.crt" --tls-key "$work/tls.key")
"$cdcheck" render "${common[@]}" > "$work/current.yaml"
"$cdcheck" render "${common[@]}" --feature frontend=0.10.6-myfeature --feature adservice=0.10.6-myfeature \
  --session 5e3b9c1a-cdcheck-fixture-session > "$work/feature.yaml"

python3 - "$work" "$out" <<'PY'
import re, sys
work, out = sys.argv[1], sys.argv[2]
def docs(path):
    return [d.strip() + "\n" for d in open(path).read().split("---\n") if d.strip()]
def kind(doc):
    return re.search(r"^kind: (\S+)", doc, re.M).group(1)
files = {"Namespace": "00-namespace.yaml", "Role": "10-rbac.yaml", "RoleBinding": "10-rbac.yaml",
         "Secret": "30-ingress.yaml", "Gateway": "30-ingress.yaml", "VirtualService": "30-ingress.yaml"}
current = docs(f"{work}/current.yaml")
split = {}
for d in current:
    name = files.get(kind(d), "20-workloads.yaml")
    if kind(d) == "ServiceAccount" and "-deployer\n" in d:
        name = "10-rbac.yaml"
    split.setdefault(name, []).append(d)
for name, ds in split.items():
    open(f"{out}/current/{name}", "w").write("".join("---\n" + d for d in ds))
# The feature branch: what the feature render adds or changes.
feature = [d for d in docs(f"{work}/feature.yaml") if d not in current]
open(f"{out}/feature/feature.yaml", "w").write("".join("---\n" + d for d in feature))
PY
ls -l "$out"/*

#!/usr/bin/env bash
# Regenerates fixtures/pipeline/: the correct pipeline the defect catalogue mutates
# (fixtures/defects/), as a pipeline would hand it to `cdcheck run --manifests`:
# several files, several documents each. The certificate is made to last 100 years
# so the fixture never expires under the `certificate` check. Also fixtures/pipeline-bluegreen/:
# the same pipeline with --strategy bluegreen, its release N (current) and N+1 (next, as
# the reference renders it: release v0.10.6-next) for `--next-manifests`; their
# namespace, RBAC and ingress files link to fixtures/pipeline/current's.
#   usage: scripts/make-pipeline-fixture.sh [path/to/cdcheck]
set -euo pipefail
cd "$(dirname "$0")/.."
cdcheck="${1:-./target/debug/cdcheck}"
out=fixtures/pipeline
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
rm -rf "$out"; mkdir -p "$out/current" "$out/feature"
bluegreen=fixtures/pipeline-bluegreen
rm -rf "$bluegreen"; mkdir -p "$bluegreen/current" "$bluegreen/next"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500 \
  -subj /CN=shop.boutique.test -addext subjectAltName=DNS:shop.boutique.test,DNS:*.boutique.test \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null

common=(--env shop --no-loadgenerator --tls-cert "$work/tls.crt" --tls-key "$work/tls.key")
"$cdcheck" render "${common[@]}" > "$work/current.yaml"
"$cdcheck" render "${common[@]}" --feature frontend=0.10.6-myfeature --feature adservice=0.10.6-myfeature \
  --session 5e3b9c1a-cdcheck-fixture-session > "$work/feature.yaml"
"$cdcheck" render "${common[@]}" --strategy bluegreen > "$work/bluegreen-current.yaml"
"$cdcheck" render "${common[@]}" --strategy bluegreen --release v0.10.6-next > "$work/bluegreen-next.yaml"

python3 - "$work" "$out" "$bluegreen" <<'PY'
import os, re, sys
work, out, bluegreen = sys.argv[1], sys.argv[2], sys.argv[3]
def docs(path):
    return [d.strip() + "\n" for d in open(path).read().split("---\n") if d.strip()]
def kind(doc):
    return re.search(r"^kind: (\S+)", doc, re.M).group(1)
files = {"Namespace": "00-namespace.yaml", "Role": "10-rbac.yaml", "RoleBinding": "10-rbac.yaml",
         "Secret": "30-ingress.yaml", "Gateway": "30-ingress.yaml", "VirtualService": "30-ingress.yaml"}
def split(path):
    out = {}
    for d in docs(path):
        name = files.get(kind(d), "20-workloads.yaml")
        if kind(d) == "ServiceAccount" and "-deployer\n" in d:
            name = "10-rbac.yaml"
        out.setdefault(name, []).append(d)
    return out
current = docs(f"{work}/current.yaml")
for name, ds in split(f"{work}/current.yaml").items():
    open(f"{out}/current/{name}", "w").write("".join("---\n" + d for d in ds))
# Blue/green: own workloads, the rest shared with the rolling pipeline (same objects).
for part in ["current", "next"]:
    ds = split(f"{work}/bluegreen-{part}.yaml")["20-workloads.yaml"]
    open(f"{bluegreen}/{part}/20-workloads.yaml", "w").write("".join("---\n" + d for d in ds))
    for name in ["00-namespace.yaml", "10-rbac.yaml", "30-ingress.yaml"]:
        os.symlink(f"../../pipeline/current/{name}", f"{bluegreen}/{part}/{name}")
# The feature branch: what the feature render adds or changes.
feature = [d for d in docs(f"{work}/feature.yaml") if d not in current]
open(f"{out}/feature/feature.yaml", "w").write("".join("---\n" + d for d in feature))
PY
ls -l "$out"/* "$bluegreen"/*

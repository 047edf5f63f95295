#!/usr/bin/env bash
# Package what the registry entrypoint needs into module.tar.gz (the path meta.json names).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
rm -f module.tar.gz
tar -czf module.tar.gz --exclude='__pycache__' --exclude='*.egg-info' \
    run.sh meta.json pyproject.toml README.md src models
echo "built module.tar.gz ($(du -h module.tar.gz | cut -f1))"

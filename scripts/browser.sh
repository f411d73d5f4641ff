#!/usr/bin/env bash
# Debian's chromium for the browser tests (tests/ui drive it with Playwright's
# executable_path): installed from the distribution's packages when missing, never a browser
# build downloaded by Playwright (`playwright install` is not used).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "scripts/browser.sh: /usr/bin/chromium is missing; install it as root: apt-get install -y chromium" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium fonts-dejavu-core >/dev/null

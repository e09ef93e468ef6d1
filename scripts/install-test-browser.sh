#!/usr/bin/env bash
# Installs Debian's Chromium for the browser test when it is missing and we can (root + apt-get).
# Anywhere else it says so and returns 0: the browser test then skips with a reason.
set -u
for candidate in chromium chromium-browser google-chrome; do
  if command -v "$candidate" >/dev/null 2>&1; then exit 0; fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "install-test-browser: apt-get could not install chromium; the browser test will skip"
else
  echo "install-test-browser: no chromium and no root apt-get here; the browser test will skip"
fi
exit 0

#!/usr/bin/env bash
# The browser test drives Debian's Chromium through Playwright (Playwright's own browser download cannot
# work offline). Install it when missing and we are allowed to; otherwise the test skips and says why.
set -u
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is missing and cannot be installed here (need root and apt-get): the browser test will skip"
  exit 0
fi
echo "installing Debian's chromium for the browser test..."
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
  || echo "chromium install failed: the browser test will skip"
exit 0

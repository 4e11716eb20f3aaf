#!/usr/bin/env bash
# Install what `make run` and `make test` need on a fresh Debian machine, idempotently:
# uv (from PyPI), the Python workspace (uv.lock), Java + Maven (to fetch and run Apache Kafka
# from Maven Central), Dovecot (the real IMAP/POP3 server the tests use), Chromium (the browser
# the admin page's tests drive with Playwright; its own browser download cannot work here).
# As non-root it installs nothing system-wide and says what is missing instead.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
if [ "${WITH_MAIL_SERVERS:-1}" = 1 ]; then
  command -v dovecot >/dev/null && [ -x /usr/lib/dovecot/imap ] && [ -x /usr/lib/dovecot/pop3 ] \
    || need_apt+=(dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd)
fi
# Chromium follows WITH_MAIL_SERVERS (the test path) unless WITH_BROWSER says otherwise.
if [ "${WITH_BROWSER:-${WITH_MAIL_SERVERS:-1}}" = 1 ]; then
  command -v chromium >/dev/null || need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing ${need_apt[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # Debian starts a system-wide dovecot on the standard ports; ours runs on private ports.
    if command -v systemctl >/dev/null; then systemctl disable --now dovecot >/dev/null 2>&1 || true; fi
    pkill -x dovecot 2>/dev/null || true
  else
    echo "bootstrap: please install: ${need_apt[*]} (apt-get install ...)" >&2
    exit 1
  fi
fi

export PATH="$HOME/.local/bin:$PATH"
if command -v uv >/dev/null; then
  uv=(uv)
else
  if ! python3 -m uv --version >/dev/null 2>&1; then
    echo "bootstrap: installing uv from PyPI"
    python3 -m pip install --quiet --root-user-action=ignore uv
  fi
  uv=(python3 -m uv)
fi
"${uv[@]}" sync --frozen --quiet

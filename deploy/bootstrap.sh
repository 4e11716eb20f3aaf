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
if [ "${WITH_IMAGE_BUILDER:-0}" = 1 ]; then  # make image-test: build the image without Docker
  command -v buildah >/dev/null || need_apt+=(buildah)
  command -v debootstrap >/dev/null || need_apt+=(debootstrap)
fi
# make bench: the peers the benchmarks measure against (bench/bench_*.py).
if [ "${WITH_BENCH_PEERS:-0}" = 1 ]; then
  command -v fetchmail >/dev/null || need_apt+=(fetchmail)
  # Postfix's smtp-sink (a C SMTP sink for bench_sender.py); the package is installed with
  # debconf "No configuration": no main.cf, so no MTA is set up or started on port 25.
  if [ ! -x /usr/sbin/smtp-sink ]; then
    need_apt+=(postfix)
    if [ "$(id -u)" = 0 ]; then
      echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    fi
  fi
fi
# make test: a real browser for the admin page's tests (Playwright drives Debian's chromium);
# Chromium follows WITH_MAIL_SERVERS (the test path) unless WITH_BROWSER says otherwise.
if [ "${WITH_BROWSER:-${WITH_MAIL_SERVERS:-1}}" = 1 ]; then
  command -v chromium >/dev/null || need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing ${need_apt[*]} from Debian's packages"
    # Debian starts (and enables) a system-wide dovecot on the standard ports when it installs
    # one; ours runs on private ports. Only a dovecot this install adds is kept from starting,
    # never one that was on the machine before (a developer's own mail server).
    new_dovecot=0
    if [[ " ${need_apt[*]} " == *" dovecot-core "* ]] && ! dpkg -s dovecot-core >/dev/null 2>&1; then
      new_dovecot=1
    fi
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ "$new_dovecot" = 1 ] && [ ! -e "$policy" ]; then
      # policy-rc.d exit 101 = "action forbidden": invoke-rc.d / deb-systemd-invoke start nothing
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
      trap 'if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    if [ "$own_policy" = 1 ]; then rm -f "$policy"; own_policy=0; fi
    if [ "$new_dovecot" = 1 ] && command -v systemctl >/dev/null; then
      # The package enabled its unit for the next boot (and, had a policy-rc.d of someone
      # else allowed it, started it): undo exactly that, for the dovecot we just installed.
      systemctl disable --now dovecot.service dovecot.socket >/dev/null 2>&1 || true
    fi
    if [[ " ${need_apt[*]} " == *" postfix "* ]] && command -v systemctl >/dev/null; then
      # only its smtp-sink binary is used (bench): never a system MTA on port 25
      systemctl disable --now postfix.service >/dev/null 2>&1 || true
    fi
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

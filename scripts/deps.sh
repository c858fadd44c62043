#!/usr/bin/env bash
# Sourced by scripts/examples and scripts/test: make sure the Debian packages
# libmp's build needs are installed. As root, missing ones are installed with
# apt-get; otherwise the exact install line is printed and the script stops.
#   need_packages PKG...
need_packages() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ]; then
    echo "libmp: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null || {
      echo "libmp: apt-get install ${missing[*]} failed" >&2
      exit 1
    }
  else
    echo "libmp needs these Debian packages; install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}

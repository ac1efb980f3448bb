#!/usr/bin/env bash
# Write deploy/nginx.conf for given instances: render-nginx.sh LISTEN INSTANCE... > nginx.conf
# LISTEN is what nginx listens on (8000, 127.0.0.1:8000); each INSTANCE is host:port.
# The template's line holding @@INSTANCE@@ is repeated once per instance.
set -euo pipefail
if [ "$#" -lt 2 ]; then
    echo "usage: $0 LISTEN INSTANCE [INSTANCE...]   (e.g. $0 8000 127.0.0.1:8001 127.0.0.1:8002)" >&2
    exit 2
fi
listen="$1"
shift
template="$(dirname "$0")/nginx.conf"
awk -v listen="$listen" -v instances="$*" '
    /^[[:space:]]*#/ { print; next }
    /@@INSTANCE@@/ {
        count = split(instances, each, " ")
        for (i = 1; i <= count; i++) {
            line = $0
            sub(/@@INSTANCE@@/, each[i], line)
            print line
        }
        next
    }
    { gsub(/@@LISTEN@@/, listen); print }
' "$template"

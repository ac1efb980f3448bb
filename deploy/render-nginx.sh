#!/usr/bin/env bash
# Write deploy/nginx.conf for given instances: render-nginx.sh LISTEN INSTANCE... > nginx.conf
# LISTEN is what nginx listens on (8000, 127.0.0.1:8000); each INSTANCE is host:port. The
# instances are named i1, i2, ... in the order given (the names the route cookie carries).
# FAIL_TIMEOUT (an nginx time, 10s by default) is how long an instance that failed a request is
# left out before one request tries it again.
#
# A host name is resolved here, to the address nginx would connect to (nginx resolves it once,
# when it starts, too): nginx reports the instance that answered by its address, and the route
# cookie is set from that.
set -euo pipefail
if [ "$#" -lt 2 ]; then
    echo "usage: $0 LISTEN INSTANCE [INSTANCE...]   (e.g. $0 8000 127.0.0.1:8001 127.0.0.1:8002)" >&2
    exit 2
fi
listen="$1"
shift
fail_timeout="${FAIL_TIMEOUT:-10s}"
if ! [[ "$fail_timeout" =~ ^[0-9]+(ms|s|m|h)?$ ]]; then
    echo "FAIL_TIMEOUT must be an nginx time such as 10s or 500ms, not '$fail_timeout'" >&2
    exit 2
fi

address_of() {
    local instance="$1" host port found
    host="${instance%:*}"
    port="${instance##*:}"
    if [ "$host" = "$instance" ] || ! [[ "$port" =~ ^[0-9]+$ ]]; then
        echo "an instance is host:port, not '$instance'" >&2
        return 1
    fi
    if [[ "$host" =~ ^[0-9.]+$ || "$host" == \[*\] ]]; then
        echo "$instance"
        return 0
    fi
    # IPv4 first: an app started with --host 127.0.0.1 does not answer on ::1.
    found="$(getent ahostsv4 "$host" | awk 'NR == 1 { print $1 }')"
    if [ -z "$found" ]; then
        found="$(getent ahosts "$host" | awk 'NR == 1 { print $1 }')"
        if [ -n "$found" ]; then
            found="[$found]"
        fi
    fi
    if [ -z "$found" ]; then
        echo "cannot resolve the instance host '$host'" >&2
        return 1
    fi
    echo "$found:$port"
}

addresses=()
for instance in "$@"; do
    addresses+=("$(address_of "$instance")")
done

template="$(dirname "$0")/nginx.conf"
awk -v listen="$listen" -v fail_timeout="$fail_timeout" -v instances="${addresses[*]}" '
    BEGIN { count = split(instances, address, " ") }
    function globals(line) {
        gsub(/@@LISTEN@@/, listen, line)
        gsub(/@@FAIL_TIMEOUT@@/, fail_timeout, line)
        return line
    }
    function one(line, i) {
        gsub(/@@NAME@@/, "i" i, line)
        gsub(/@@INSTANCE@@/, address[i], line)
        return globals(line)
    }
    # The block between the for-each markers: once per instance.
    /^@@FOR_EACH_INSTANCE@@$/ { inside = 1; kept = 0; next }
    /^@@END_FOR_EACH@@$/ {
        inside = 0
        for (i = 1; i <= count; i++) {
            for (k = 1; k <= kept; k++) {
                line = block[k]
                if (line ~ /@@OTHER_INSTANCE@@/) {
                    for (j = 1; j <= count; j++) {
                        if (j == i) continue
                        other = line
                        gsub(/@@OTHER_INSTANCE@@/, address[j], other)
                        print one(other, i)
                    }
                } else {
                    print one(line, i)
                }
            }
        }
        next
    }
    inside { block[++kept] = $0; next }
    # Comments speak of the markers: only the single values are replaced there.
    /^[[:space:]]*#/ { print globals($0); next }
    # A line naming an instance: once per instance.
    /@@INSTANCE@@|@@NAME@@/ {
        for (i = 1; i <= count; i++) print one($0, i)
        next
    }
    { print globals($0) }
' "$template"

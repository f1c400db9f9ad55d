#!/bin/sh
# Notify command of the demo module: mail the operator when this node takes the application
# over, and when it is back on stand-by. Run by the mirrorkit daemon on every state change of
# the module on this node, with the MIRRORKIT_NOTIFY_* variables (and the JSON of the change on
# standard input, unused here). Other transitions exit 0 without a mail.
#
# Settings, from the module's [env] (names starting with MIRRORKIT_ are reserved there):
#   NOTIFY_MAIL_TO    recipient                       (default: root)
#   NOTIFY_MAIL_FROM  sender                          (default: mirrorkit@<this host>)
#   NOTIFY_SENDMAIL   sendmail-compatible program     (default: /usr/sbin/sendmail)
# A missing sendmail program exits 1 with a message on stderr: the daemon logs it.
set -eu

: "${MIRRORKIT_NOTIFY_MODULE:?is set by the mirrorkit daemon}"
: "${MIRRORKIT_NOTIFY_NODE:?is set by the mirrorkit daemon}"
: "${MIRRORKIT_NOTIFY_OLD_STATE:?is set by the mirrorkit daemon}"
: "${MIRRORKIT_NOTIFY_NEW_STATE:?is set by the mirrorkit daemon}"

module=$MIRRORKIT_NOTIFY_MODULE
node=$MIRRORKIT_NOTIFY_NODE
old=$MIRRORKIT_NOTIFY_OLD_STATE
new=$MIRRORKIT_NOTIFY_NEW_STATE

case "$new" in
ALONE | PRIM)
    case "$old" in
    SECOND | WAIT | STARTING | PROMOTING) ;;
    *) exit 0 ;;
    esac
    subject="[mirrorkit] $module: $node took over ($new)"
    ;;
SECOND)
    subject="[mirrorkit] $module: $node is back on stand-by"
    ;;
*)
    exit 0
    ;;
esac

sendmail=${NOTIFY_SENDMAIL:-/usr/sbin/sendmail}
if ! command -v "$sendmail" >/dev/null 2>&1; then
    echo "notify-mail.sh: sendmail program $sendmail not found (install a mail transfer agent, or set NOTIFY_SENDMAIL in the module's [env])" >&2
    exit 1
fi
to=${NOTIFY_MAIL_TO:-root}
from=${NOTIFY_MAIL_FROM:-mirrorkit@$(uname -n)}

# Header values on one line, whatever the variables hold.
one_line() {
    printf '%s' "$1" | tr '\r\n' '  '
}

{
    printf 'From: %s\n' "$(one_line "$from")"
    printf 'To: %s\n' "$(one_line "$to")"
    printf 'Subject: %s\n' "$(one_line "$subject")"
    printf 'Date: %s\n' "$(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S +0000')"
    printf 'Content-Type: text/plain; charset=UTF-8\n'
    printf '\n'
    printf 'Module:  %s\n' "$module"
    printf 'Node:    %s\n' "$node"
    printf 'State:   %s -> %s\n' "$old" "$new"
    printf 'Reason:  %s\n' "${MIRRORKIT_NOTIFY_REASON:-}"
    printf 'Time:    %s\n' "${MIRRORKIT_NOTIFY_TIME:-}"
    printf 'Cluster: %s\n' "${MIRRORKIT_NOTIFY_CLUSTER:-}"
} | "$sendmail" -t -oi

#!/bin/sh
# busy-mixed's --auth-user-pass-verify (via-file: $1 holds the client's username and password,
# one a line; run by the server in captures/): accept only the pair in keys/user-pass.txt,
# every other client gets AUTH_FAILED.
{ read -r user; read -r pass; } < "$1"
{ read -r want_user; read -r want_pass; } < keys/user-pass.txt
[ "$user" = "$want_user" ] && [ "$pass" = "$want_pass" ]

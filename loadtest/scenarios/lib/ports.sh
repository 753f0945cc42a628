# Sourced by the benchmark scripts: ports chosen by the system, so that a
# benchmark runs beside whatever else listens on the machine.
#
#   . loadtest/scenarios/lib/ports.sh
#   free_ports MOCK_PORT PROXY_PORT
#
# free_ports VAR... sets each VAR to a port on 127.0.0.1 that the kernel
# handed out for bind(port 0) a moment ago: distinct from each other and
# from every port an earlier call in this script gave (all are held until
# the last is chosen). Something else may take one before the benchmark's
# own server binds it: that server then fails to start and the script
# stops with its error, as it would on any busy port. Call it directly, not
# in `$( )`: it remembers what it gave in this shell.
: "${_FREE_PORTS_GIVEN:=}"
free_ports() {
  local _fp_ports _fp_var
  # shellcheck disable=SC2086 # the list of given ports, one argument each
  _fp_ports=$(python3 - "$#" $_FREE_PORTS_GIVEN <<'PY'
import socket, sys
want, given = int(sys.argv[1]), set(sys.argv[2:])
held, chosen = [], []
while len(chosen) < want:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    held.append(s)
    port = str(s.getsockname()[1])
    if port not in given:
        chosen.append(port)
print(" ".join(chosen))
PY
  ) || { echo "error: could not choose free ports on 127.0.0.1 (python3 failed)" >&2; exit 1; }
  _FREE_PORTS_GIVEN="$_FREE_PORTS_GIVEN $_fp_ports"
  read -r -a _fp_ports <<< "$_fp_ports"
  for _fp_var in "$@"; do
    printf -v "$_fp_var" '%s' "${_fp_ports[0]}"
    _fp_ports=("${_fp_ports[@]:1}")
  done
}

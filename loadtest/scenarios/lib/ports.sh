# Sourced by the benchmark scripts: ports chosen by the system, so that a
# benchmark runs beside whatever else listens on the machine.
#
#   . loadtest/scenarios/lib/ports.sh
#   read -r MOCK_PORT PROXY_PORT <<< "$(free_ports 2)"
#
# free_ports N prints N distinct ports on 127.0.0.1 that the kernel handed
# out for bind(port 0) a moment ago; all N are held until the last is
# chosen, so none repeats. Something else may take one before the
# benchmark's own server binds it: that server then fails to start and the
# script stops with its error, as it would on any busy port.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}

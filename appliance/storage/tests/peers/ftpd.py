"""pyftpdlib server for the FTP backend tests (run with Debian's /usr/bin/python3).

usage: ftpd.py PORT ROOT USER PASSWORD [--tls CERT KEY] [--drop-data N]
--tls: explicit FTPS (AUTH TLS), with TLS required on control and data connections.
--drop-data N: every Nth STOR/RETR closes the data connection and answers 426.
"""
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

args = sys.argv[1:]
port, root, user, password = int(args[0]), args[1], args[2], args[3]
rest = args[4:]
tls = None
drop = 0
while rest:
    if rest[0] == "--tls":
        tls = (rest[1], rest[2])
        rest = rest[3:]
    elif rest[0] == "--drop-data":
        drop = int(rest[1])
        rest = rest[2:]
    else:
        sys.exit("unknown argument " + rest[0])

base = FTPHandler
if tls:
    from pyftpdlib.handlers import TLS_FTPHandler

    base = TLS_FTPHandler

counter = [0]


class Handler(base):
    def _maybe_drop(self):
        if not drop:
            return False
        counter[0] += 1
        if counter[0] % drop == 0:
            if self.data_channel is not None:
                self.data_channel.close()
            self.respond("426 Connection closed; transfer aborted (test fault).")
            return True
        return False

    def ftp_STOR(self, file, mode="w"):
        if self._maybe_drop():
            return
        return super().ftp_STOR(file, mode)

    def ftp_RETR(self, file):
        if self._maybe_drop():
            return
        return super().ftp_RETR(file)


if tls:
    Handler.certfile = tls[0]
    Handler.keyfile = tls[1]
    Handler.tls_control_required = True
    Handler.tls_data_required = True

auth = DummyAuthorizer()
auth.add_user(user, password, root, perm="elradfmwMT")
Handler.authorizer = auth
Handler.passive_ports = None
server = FTPServer(("127.0.0.1", port), Handler)
server.max_cons = 256
server.serve_forever()

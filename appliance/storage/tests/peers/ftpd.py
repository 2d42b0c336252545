"""pyftpdlib server for the FTP backend tests (run with Debian's /usr/bin/python3).

usage: ftpd.py PORT ROOT USER PASSWORD [--tls CERT KEY] [--implicit] [--drop-data N]
                [--cut-data BYTES N]
--tls: explicit FTPS (AUTH TLS), with TLS required on control and data connections.
--implicit: with --tls, implicit FTPS: TLS from the first byte, no AUTH command.
--drop-data N: every Nth STOR/RETR closes the data connection and answers 426.
--cut-data BYTES N: every Nth STOR/RETR of more than BYTES bytes is cut after BYTES bytes:
  the data connection closes, the server answers 426 and drops the control connection too
  (what a network cut looks like). The bytes received so far stay in the file.
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
implicit = False
cut = None
while rest:
    if rest[0] == "--tls":
        tls = (rest[1], rest[2])
        rest = rest[3:]
    elif rest[0] == "--implicit":
        implicit = True
        rest = rest[1:]
    elif rest[0] == "--cut-data":
        cut = (int(rest[1]), int(rest[2]))
        rest = rest[3:]
    elif rest[0] == "--drop-data":
        drop = int(rest[1])
        rest = rest[2:]
    else:
        sys.exit("unknown argument " + rest[0])

base = FTPHandler
dtp_base = None
if tls:
    from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

    base = TLS_FTPHandler
    dtp_base = TLS_DTPHandler
else:
    from pyftpdlib.handlers import DTPHandler

    dtp_base = DTPHandler

counter = [0]
cut_counter = [0]


class CutDTP(dtp_base):
    """Data channel that may be cut after `cut[0]` bytes (see --cut-data)."""

    def __init__(self, sock, cmd_channel):
        super().__init__(sock, cmd_channel)
        self._cut_at = None
        if cut:
            cut_counter[0] += 1
            if cut_counter[0] % cut[1] == 0:
                self._cut_at = cut[0]

    def _cut(self):
        self._resp = ("426 Connection lost (test fault).", lambda *a: None)
        ctl = self.cmd_channel
        self.close()
        ctl.close_when_done()

    def handle_read_event(self):
        if (
            self._cut_at is not None
            and self.tot_bytes_received >= self._cut_at
            and not getattr(self, "_ssl_accepting", False)
        ):
            return self._cut()
        return super().handle_read_event()

    def send(self, data):
        if self._cut_at is not None:
            room = self._cut_at - self.tot_bytes_sent
            if room <= 0:
                self._cut()
                return 0
            data = data[:room]
        return super().send(data)

    def use_sendfile(self):
        return False if cut else super().use_sendfile()


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


if implicit:

    class ImplicitHandler(Handler):
        """Implicit FTPS: the TLS handshake comes first, then the 220 banner."""

        def handle(self):
            self.secure_connection(self.ssl_context)
            self._pbsz = False

        def handle_ssl_established(self):
            super().handle()

    Handler = ImplicitHandler

Handler.dtp_handler = CutDTP
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

#!/usr/bin/python3
"""A live HTTP-FLV server for the ffmpeg source tests: http://127.0.0.1:PORT/live.flv.

Usage: flv_server.py PORT [FFMPEG]. Each client gets its own live stream, encoded by an
ffmpeg child writing FLV straight into the client's socket (ffmpeg's own `-listen 1` HTTP
server serves one client and exits, which a restarting reader would outlive). Standard
library only. Prints "ready" once it listens.
"""
import ctypes
import http.server
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1
LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent():
    # The encoder must not outlive this server, however the server ends.
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        if self.path.split("?")[0] != "/live.flv":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "video/x-flv")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.flush()
        cmd = [
            FFMPEG, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
            "-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=15",
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "15",
            "-f", "flv", "pipe:1",
        ]
        # The client going away ends ffmpeg with EPIPE.
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=self.connection.fileno(),
                       preexec_fn=die_with_parent, check=False)

    def log_message(self, *args):
        pass


def main():
    global FFMPEG
    port = int(sys.argv[1])
    FFMPEG = sys.argv[2] if len(sys.argv) > 2 else "ffmpeg"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

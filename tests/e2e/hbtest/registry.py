"""A stand-in for a Confluent-compatible Schema Registry, in the test process.

No real registry runs on these machines (Confluent's is not on Maven
Central; Apicurio's app does not resolve from it: its
apicurio-registry-schema-util-provider is not served; Karapace is not on the
PyPI mirror), so this serves the two calls hookbridge makes, as Confluent
documents them:
  GET  /schemas/ids/{id}            -> 200 {"schema": "..."} | 404 {"error_code": 40403, ...}
  POST /subjects/{subject}/versions -> 200 {"id": N} (the same schema, the same id)
with HTTP basic auth, and two faults: mode "503" answers every request 503
(a registry whose storage is away), and stop() closes the port (a registry
that is gone); start() brings it back on the same port. tls=(cert, key)
serves HTTPS instead (url is then https://).
"""
import base64
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .procs import free_port


class StandInRegistry:
    def __init__(self, user="hb-reader", password="s3cret-registry-pw", start=True, tls=None):
        self.user_info = f"{user}:{password}"
        self._auth = "Basic " + base64.b64encode(self.user_info.encode()).decode()
        self.schemas = {}  # id -> schema text
        self.subjects = {}  # subject -> [ids]
        self.mode = "up"
        self.requests = []  # (method, path, status)
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._server = None
        self._thread = None
        if start:
            self.start()

    def add(self, schema_id, schema):
        self.schemas[schema_id] = schema if isinstance(schema, str) else json.dumps(schema)

    def start(self):
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, obj):
                data = json.dumps(obj).encode()
                registry.requests.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _check(self):
                if registry.mode == "503":
                    self._answer(503, {"error_code": 50301, "message": "storage unavailable"})
                    return False
                if self.headers.get("Authorization") != registry._auth:
                    self._answer(401, {"error_code": 401, "message": "Unauthorized"})
                    return False
                return True

            def do_GET(self):
                if not self._check():
                    return
                parts = self.path.split("/")
                if len(parts) == 4 and parts[1:3] == ["schemas", "ids"] and parts[3].isdigit():
                    sid = int(parts[3])
                    if sid in registry.schemas:
                        return self._answer(200, {"schema": registry.schemas[sid]})
                    return self._answer(404, {"error_code": 40403,
                                              "message": f"Schema {sid} not found"})
                self._answer(404, {"error_code": 404, "message": "HTTP 404 Not Found"})

            def do_POST(self):
                if not self._check():
                    return
                parts = self.path.split("/")
                n = int(self.headers.get("Content-Length") or 0)
                req = json.loads(self.rfile.read(n) or b"{}")
                if len(parts) != 4 or parts[1] != "subjects" or parts[3] != "versions":
                    return self._answer(404, {"error_code": 404, "message": "not found"})
                text = req.get("schema")
                try:
                    json.loads(text)
                except (TypeError, ValueError):
                    return self._answer(422, {"error_code": 42201, "message": "Invalid schema"})
                sid = next((i for i, s in registry.schemas.items()
                            if json.loads(s) == json.loads(text)), None)
                if sid is None:
                    sid = max(registry.schemas, default=0) + 1
                    registry.schemas[sid] = text
                registry.subjects.setdefault(parts[2], []).append(sid)
                self._answer(200, {"id": sid})

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*[str(p) for p in self.tls])
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    def served(self, method="GET", path_prefix="/schemas/ids/", status=200):
        return [r for r in self.requests
                if r[0] == method and r[1].startswith(path_prefix) and r[2] == status]

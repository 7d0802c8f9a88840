"""The producer's Okta event-hook ingest endpoint (hookbridge-producer
--listen) for end-to-end tests: start it, post to it as Okta does, read the
events topic back."""
import http.client
import json
import socket

from .procs import BIN, SLOW, free_port, http_get, wait_until
from .stack import topic_records

AUTH_HEADER = "Authorization"
AUTH_VALUE = "Bearer okta-hook-secret-51c2e8"
PATH = "/okta/events"


def envelope(events):
    """Okta's event-hook request body around a list of LogEvents."""
    return {"eventType": "com.okta.event_hook", "eventTypeVersion": "1.0",
            "cloudEventsVersion": "0.1", "source": "https://example.okta.com/api/v1/eventHooks/who",
            "eventId": "b5a188b9-5ece-4636-b041-482ffda96311",
            "eventTime": "2026-11-29T09:00:00.000Z", "contentType": "application/json",
            "data": {"events": events}}


class Ingest:
    """hookbridge-producer --listen on a free loopback port, health on another."""

    def __init__(self, group, brokers, auth_value=AUTH_VALUE, extra_env=None, name="ingest",
                 wait=True):
        self.port = free_port()
        self.health_port = free_port()
        env = {"HOOKBRIDGE_KAFKA_BROKERS": brokers,
               "HOOKBRIDGE_HTTP_LISTEN": f"127.0.0.1:{self.health_port}",
               "HOOKBRIDGE_LOG_LEVEL": "debug"}
        space = getattr(brokers, "space", None)  # a TopicSpace's bootstrap: its topics
        if space:
            env["HOOKBRIDGE_EVENTS_TOPIC"] = space.events_topic
            env["HOOKBRIDGE_DLQ_TOPIC"] = space.dlq_topic
        if auth_value is not None:
            env["HOOKBRIDGE_INGEST_AUTH_VALUE"] = auth_value
        env.update(extra_env or {})
        self.auth_value = auth_value
        self.proc = group.start(name, [BIN / "hookbridge-producer", "--listen",
                                       f"127.0.0.1:{self.port}"], env)
        if wait:
            wait_until(lambda: self.ops("/healthz")[0] == 200 or not self.proc.alive(), 20,
                       "the ingest endpoint to listen")
            assert self.proc.alive(), "producer exited:\n" + self.proc.output()[-3000:]
            # The endpoint listens before the health port answers (it was
            # the other way round: CI's first post was refused).
            socket.create_connection(("127.0.0.1", self.port), timeout=5 * SLOW).close()

    def wait_ready(self, timeout=20):
        wait_until(lambda: self.ops("/readyz")[0] == 200 or not self.proc.alive(), timeout,
                   "the ingest endpoint to be ready")
        assert self.proc.alive(), "producer exited:\n" + self.proc.output()[-3000:]

    def wait_in_progress(self, n=1, timeout=10):
        """Until n deliveries are in whole and unanswered (their events
        handed to the brokers, or on their way): what a stop must answer."""
        wait_until(lambda: self.metric("hookbridge_ingest_requests_in_progress") == n, timeout,
                   f"{n} delivery(ies) in, waiting for the brokers")

    def ops(self, path):
        """GET on the operations port: (status, body)."""
        return http_get(self.health_port, path)

    def metric(self, series):
        """The value of one metrics series (name and labels as rendered), or None."""
        for line in self.ops("/metrics")[1].splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return None

    def request(self, method, body=None, auth=True, headers=None, path=PATH, timeout=30):
        """One request; returns (status, headers as a lowercase dict, JSON body or text)."""
        h = dict(headers or {})
        if auth is True and self.auth_value is not None:
            h[AUTH_HEADER] = self.auth_value
        elif isinstance(auth, str):
            h[AUTH_HEADER] = auth
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        if body is not None:
            h.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout * SLOW)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read().decode()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
        finally:
            conn.close()
        try:
            data = json.loads(data)
        except ValueError:
            pass
        return r.status, hdrs, data

    def post(self, events_or_body, **kw):
        body = events_or_body
        if isinstance(body, list):
            body = envelope(body)
        return self.request("POST", body, **kw)


def topic_messages(bootstrap, topic="identity.events"):
    """Everything on the topic from the beginning (kafka-python), as a list:
    what the endpoint acknowledged is on it."""
    return topic_records(bootstrap, topic)

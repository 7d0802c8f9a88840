"""Review 62: the leftovers of subscription previews (hookbridge.preview(),
feature 60, review 61), as a user comparing, waiting for and relying on them
sees them.

On 58f732a (main when this review began) each test here fails: the
preview's sample event carried its members in the generator's order (uuid
and version last), not the order of a real delivery of the type (the Avro
schema's, as the consumer decodes it); a preview the HTTP engine did not
take (its endpoint's queue full) waited for its whole lease (71 s here)
before anyone tried it again; and a preview whose subscription the
dispatcher cannot load (its secret sealed under a key it lacks) stayed
pending, claimed again at each lease's end for 7 days, the caller never
told why."""
import uuid

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, register_verified, sql

STATUS = "SELECT status, http_status, error FROM hookbridge.previews WHERE id = %s"


def finished(db_url, preview, timeout):
    """The preview's (status, http_status, error) once it is not pending."""
    return wait_until(lambda: (r := sql(db_url, STATUS, preview)[0])[0] != "pending" and r,
                      timeout, "the preview's outcome")


def test_a_preview_carries_the_members_of_a_real_delivery_in_their_order(
        db_url, broker, procs, workdir):
    """docs/sql.md, preview: the sample event is shaped as a delivery of its
    type. A user sends the preview's event as a real one (a new uuid) and
    puts the two deliveries side by side: the same members in the same
    order (before, uuid and version came last in the preview, first in the
    real delivery)."""
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    sub = register_verified(db_url, receiver.url, ["user.lifecycle.create"])
    preview = sql(db_url, "SELECT hookbridge.preview(%s)", sub)[0][0]
    assert finished(db_url, preview, 10 * SLOW)[0] == "delivered"
    (sample,) = [e for r, e in receiver.events() if r["headers"]["webhook-id"] == preview]
    real = dict(sample, uuid=str(uuid.uuid4()))
    produce(broker.bootstrap, [real])
    got = wait_until(lambda: [e for _, e in receiver.events() if e["uuid"] == real["uuid"]],
                     10 * SLOW, "the real delivery")[0]
    assert got == real
    assert list(sample) == list(got), (list(sample), list(got))
    assert list(sample)[:2] == ["uuid", "published"]

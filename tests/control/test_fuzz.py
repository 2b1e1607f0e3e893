"""Whatever JSON arrives, the answer is a deliberate 2xx/4xx JSON object, never a 500."""

import json
import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from .helpers import BASE, NODE1, Harness, at_once, new_id

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2 ** 80, max_value=2 ** 80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
uuids = st.uuids(version=4).map(str) | st.uuids().map(str) | st.text(min_size=36, max_size=36)
v4 = st.uuids(version=4).map(str)
sizes = st.sampled_from(
    [0, 67108864, 67108864 + 1, 2 ** 62, 2 ** 63, 2 ** 63 + 1024, 2 ** 64, 2 ** 80, -2 ** 64]
) | st.integers(min_value=-1, max_value=2 ** 70).map(lambda n: n * 1024)
plausible_dataset_bodies = st.fixed_dictionaries(
    {"primary": v4, "maximum_size": sizes},
    optional={"dataset_id": v4, "metadata": st.dictionaries(st.text(max_size=5),
                                                            st.text(max_size=5), max_size=3)},
)
dataset_bodies = plausible_dataset_bodies | st.fixed_dictionaries(
    {},
    optional={
        "primary": uuids | json_values,
        "dataset_id": uuids | json_values,
        "metadata": st.dictionaries(st.text(max_size=300), st.text(max_size=300) | json_values,
                                    max_size=20) | json_values,
        "maximum_size": st.integers(min_value=-1, max_value=2 ** 70).map(lambda n: n * 1024)
        | json_values,
        "deleted": json_values,
    },
) | json_values
lease_bodies = st.fixed_dictionaries(
    {"dataset_id": v4, "node_uuid": v4},
    optional={"expires": st.floats(allow_nan=False, allow_infinity=False) | st.integers()},
) | st.fixed_dictionaries(
    {}, optional={"dataset_id": uuids | json_values, "node_uuid": uuids | json_values,
                  "expires": st.floats(allow_nan=False, allow_infinity=False) | json_values},
) | json_values
report_bodies = st.fixed_dictionaries(
    {"host": st.just("10.0.0.1"), "agent_url": st.just("http://10.0.0.1:4524"),
     "datasets": st.lists(st.fixed_dictionaries(
         {"dataset_id": v4, "path": st.just("/p")}, optional={"maximum_size": sizes}),
         max_size=3)},
) | st.fixed_dictionaries(
    {}, optional={
        "host": st.just("10.0.0.1") | json_values,
        "agent_url": st.just("http://10.0.0.1:4524") | json_values,
        "datasets": st.lists(st.fixed_dictionaries(
            {}, optional={"dataset_id": uuids | json_values, "path": st.text(max_size=10),
                          "maximum_size": json_values}), max_size=3) | json_values,
        "transfers": st.lists(st.fixed_dictionaries(
            {}, optional={"dataset_id": uuids, "direction": st.sampled_from(["push", "x"]),
                          "peer": uuids, "bytes_done": json_values,
                          "bytes_total": json_values}), max_size=2) | json_values,
    },
) | json_values


class NeverAnInternalErrorTests(SynchronousTestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="control-fuzz-")
        self.addCleanup(shutil.rmtree, self.directory)
        self.h = Harness(self.directory)
        self.addCleanup(self.h.close)
        self.known = new_id()
        at_once(self.h.service.create_dataset(NODE1, dataset_id=self.known))

    def send(self, method, path, body):
        response = self.successResultOf(self.h.treq.request(
            method, BASE + path, data=json.dumps(body).encode()))
        content = self.h.treq.content(response)
        self.h.treq.flush()
        answer = json.loads(self.successResultOf(content))
        self.assertLess(response.code, 500, (method, path, body, answer))
        if response.code >= 400:
            self.assertIsInstance(answer.get("description"), str)
        return response.code

    @settings(max_examples=75, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(dataset_bodies)
    def test_create(self, body):
        self.assertIn(self.send("POST", "/v1/configuration/datasets", body), (201, 400, 409))

    @settings(max_examples=50, deadline=None)
    @given(dataset_bodies)
    def test_update(self, body):
        self.assertIn(
            self.send("POST", f"/v1/configuration/datasets/{self.known}", body), (200, 400))

    @settings(max_examples=75, deadline=None)
    @given(lease_bodies)
    def test_lease(self, body):
        self.assertIn(self.send("POST", "/v1/configuration/leases", body), (200, 201, 400, 409))

    @settings(max_examples=75, deadline=None)
    @given(report_bodies)
    def test_report(self, body):
        self.assertIn(self.send("PUT", f"/agent/v1/nodes/{NODE1}", body), (200, 400))
        # Whatever was accepted, every view still renders.
        for path in ["/v1/state/datasets", "/v1/state/nodes", "/agent/v1/cluster",
                     "/v1/configuration/leases", "/v1/configuration/datasets"]:
            response = self.successResultOf(self.h.treq.get(BASE + path))
            self.assertEqual(response.code, 200)

"""powerstrip-flocker status: rows from the v1 documents, fetched from a real service."""

import argparse

from twisted.trial.unittest import TestCase

from powerstripflocker.cli import status
from powerstripflocker.cli.status import build_rows, fetch, render_table
from powerstripflocker.clients.http import TOKEN_ENV, control_root as base_url

from .helpers import BASE, NODE1, NODE2, harness

D1 = "11111111-1111-4111-8111-111111111111"
D2 = "22222222-2222-4222-8222-222222222222"
D3 = "33333333-3333-4333-8333-333333333333"
D4 = "44444444-4444-4444-8444-444444444444"


class PureTests(TestCase):

    def test_base_url_accepts_v1_and_slashes(self):
        for url in ["http://h:4523", "http://h:4523/", "http://h:4523/v1", "http://h:4523/v1/"]:
            self.assertEqual(base_url(url), "http://h:4523")

    def test_states_and_columns(self):
        configuration = [
            {"dataset_id": D1, "primary": NODE1, "metadata": {"name": "here"},
             "deleted": False, "maximum_size": 67108864},
            {"dataset_id": D2, "primary": NODE2, "metadata": {"name": "moving"},
             "deleted": False},
            {"dataset_id": D3, "primary": NODE2, "metadata": {}, "deleted": False},
            {"dataset_id": D4, "primary": NODE1, "metadata": {"name": "gone"}, "deleted": True},
        ]
        state = [
            {"dataset_id": D1, "primary": NODE1, "path": "/srv/d1", "maximum_size": 67108864},
            {"dataset_id": D2, "primary": NODE1, "path": "/srv/d2"},
        ]
        nodes = [{"host": "10.0.0.1", "uuid": NODE1}]
        leases = [{"dataset_id": D1, "node_uuid": NODE1, "expires": None},
                  {"dataset_id": D2, "node_uuid": NODE1, "expires": 42.4}]
        cluster = {"nodes": [
            {"uuid": NODE1, "host": "10.0.0.1", "transfers": [
                {"dataset_id": D2, "direction": "push", "peer": NODE2,
                 "bytes_done": 512 * 1024, "bytes_total": 2 * 1024 * 1024}]},
            {"uuid": NODE2, "host": "10.0.0.2", "transfers": [
                {"dataset_id": D2, "direction": "receive", "peer": NODE1,
                 "bytes_done": 1, "bytes_total": 2}]},
        ]}
        rows = {row["dataset"]: row for row in
                build_rows(configuration, state, nodes, leases, cluster)}
        self.assertEqual(set(rows), {D1, D2, D3})
        self.assertEqual(rows[D1], {
            "name": "here", "dataset": D1, "primary": "10.0.0.1", "state": "manifest",
            "path": "/srv/d1", "size": "64MiB", "lease": "10.0.0.1 (no expiry)",
            "replicas": "-"})
        self.assertEqual(rows[D2]["state"], "moving from 10.0.0.1 25% (512KiB/2MiB)")
        self.assertEqual(rows[D2]["primary"], "10.0.0.2")
        self.assertEqual(rows[D2]["path"], "-")
        self.assertEqual(rows[D2]["lease"], "10.0.0.1 (42s)")
        self.assertEqual((rows[D3]["name"], rows[D3]["state"]), ("-", "pending"))
        with_deleted = build_rows(configuration, state, nodes, leases, include_deleted=True)
        self.assertIn("deleted", [row["state"] for row in with_deleted])
        # No cluster view (no token): moving still shown, without progress.
        plain = {r["dataset"]: r for r in build_rows(configuration, state, nodes, leases)}
        self.assertEqual(plain[D2]["state"], "moving from 10.0.0.1")
        self.assertEqual(plain[D2]["primary"], NODE2[:8])

    def test_a_stalled_move_shows_its_cause(self):
        configuration = [{"dataset_id": D1, "primary": NODE2, "metadata": {"name": "db"},
                          "deleted": False}]
        state = [{"dataset_id": D1, "primary": NODE1, "path": "/srv/d1"}]
        nodes = [{"host": "198.18.0.2", "uuid": NODE1}, {"host": "198.18.0.3", "uuid": NODE2}]
        cluster = {"nodes": [{"uuid": NODE1, "host": "198.18.0.2", "transfers": [
            {"dataset_id": D1, "direction": "push", "peer": NODE2, "bytes_done": 1024,
             "bytes_total": 4096, "attempts": 5, "stalled": True,
             "error": "No space left on device on 198.18.0.3"}]}]}
        [row] = build_rows(configuration, state, nodes, [], cluster)
        self.assertEqual(row["state"], "moving from 198.18.0.2 25% (1KiB/4KiB) stalled: "
                                       "No space left on device on 198.18.0.3")

    async def test_a_stalled_move_reported_by_an_agent_reaches_the_table(self):
        h = harness(self, token="tok")
        d = await h.create(primary=NODE1, metadata={"name": "db"})
        await h.report(NODE1, [{"dataset_id": d["dataset_id"], "path": "/srv/db"}],
                       host="198.18.0.2")
        await h.request("POST", f"/v1/configuration/datasets/{d['dataset_id']}",
                        {"primary": NODE2})
        await h.report(NODE1, [{"dataset_id": d["dataset_id"], "path": "/srv/db"}], [
            {"dataset_id": d["dataset_id"], "direction": "push", "peer": NODE2,
             "bytes_done": 0, "bytes_total": None, "attempts": 5, "stalled": True,
             "error": "No space left on device on 198.18.0.3"}], host="198.18.0.2")
        [row] = build_rows(*await fetch(h.treq, BASE, token="tok"))
        self.assertEqual(row["state"], "moving from 198.18.0.2 (0B) stalled: "
                                       "No space left on device on 198.18.0.3")

    def test_replicas_are_the_chosen_nodes_hosts(self):
        configuration = [{"dataset_id": d, "primary": NODE1, "metadata": {"name": d[:2]},
                          "deleted": False} for d in (D1, D2, D3)]
        nodes = [{"host": "10.0.0.1", "uuid": NODE1}, {"host": "10.0.0.2", "uuid": NODE2}]
        cluster = {"nodes": [], "datasets": [
            {"dataset_id": D1, "replicas": 1, "replica_nodes": [NODE2]},
            {"dataset_id": D2, "replicas": 2, "replica_nodes": [NODE2]},
            {"dataset_id": D3, "replicas": 0, "replica_nodes": []}]}
        rows = {row["dataset"]: row["replicas"]
                for row in build_rows(configuration, [], nodes, [], cluster)}
        self.assertEqual(rows, {D1: "10.0.0.2", D2: "10.0.0.2 (1 of 2 chosen)", D3: "-"})
        plain = build_rows(configuration, [], nodes, [])
        self.assertEqual({row["replicas"] for row in plain}, {"-"})

    async def test_replicas_chosen_by_the_service_reach_the_table(self):
        h = harness(self, token="tok")
        await h.report(NODE1, host="10.0.0.1")
        await h.report(NODE2, host="10.0.0.2")
        await h.request("POST", "/v1/configuration/claims",
                        {"name": "copied", "node_uuid": NODE1, "replicas": 2})
        h.clock.advance(1)
        [row] = build_rows(*await fetch(h.treq, BASE, token="tok"))
        self.assertEqual(row["replicas"], "10.0.0.2 (1 of 2 chosen)")
        self.assertIn("REPLICAS", render_table([row]).splitlines()[0])

    def test_table_is_aligned(self):
        rows = [{"name": "a", "dataset": "x" * 36, "primary": "p", "state": "pending",
                 "path": "-", "size": "-", "lease": "-", "replicas": "-"},
                {"name": "longer-name", "dataset": "y" * 36, "primary": "p", "state": "manifest",
                 "path": "/p", "size": "1GiB", "lease": "-", "replicas": "10.0.0.2"}]
        lines = render_table(rows).splitlines()
        self.assertEqual(len(lines), 3)
        self.assertTrue(lines[0].startswith("NAME         DATASET"))
        self.assertEqual(lines[1].index("x"), lines[2].index("y"))


class FetchTests(TestCase):

    async def test_fetch_from_the_control_service(self):
        h = harness(self, token="tok")
        d = await h.create(primary=NODE1, metadata={"name": "demo"})
        await h.report(NODE1, [{"dataset_id": d["dataset_id"], "path": "/srv/demo"}],
                       host="10.0.0.1")
        documents = await fetch(h.treq, BASE + "/v1/", token="tok")
        self.assertIsNotNone(documents[4])
        [row] = build_rows(*documents)
        self.assertEqual((row["name"], row["state"], row["path"], row["primary"]),
                         ("demo", "manifest", "/srv/demo", "10.0.0.1"))
        # Without the token nothing is shown: the v1 API needs it too.
        with self.assertRaises(status.StatusError) as refused:
            await fetch(h.treq, BASE, token=None)
        self.assertIn("answered 401", str(refused.exception))

    async def test_error_answers_become_status_errors(self):
        h = harness(self)
        with self.assertRaises(status.StatusError):
            await fetch(h.treq, BASE + "/nothing-here")


class UnreachableTests(TestCase):

    async def test_unreachable_service_is_a_status_error(self):
        import argparse as _argparse

        from twisted.internet import reactor

        from tests.support.processes import free_port

        options = _argparse.Namespace(tls_ca=None, tls_cert=None, tls_key=None)
        client = status.make_client(reactor, options)
        with self.assertRaises(status.StatusError) as raised:
            await fetch(client, f"http://127.0.0.1:{free_port()}")
        self.assertIn("cannot reach the control service", str(raised.exception))


class CommandTests(TestCase):

    def parse(self, *args, env=None):
        parser = argparse.ArgumentParser()
        status.configure(parser)
        return parser.parse_args(list(args))

    def test_token_from_file_or_environment(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-file\n")
        self.assertEqual(
            status.read_token(self.parse("--cluster-token-file", path), {}), "from-file")
        self.assertEqual(
            status.read_token(self.parse(), {TOKEN_ENV: "env"}), "env")
        self.assertIsNone(status.read_token(self.parse(), {}))

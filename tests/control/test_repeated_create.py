"""A create sent again with its own dataset_id (its first answer lost, issue 14) is
answered 409 for that id, with or without the tag the first one moved; a stale tag on a
create of a new id is still 412."""

from twisted.trial.unittest import TestCase

from .helpers import NODE1, harness, header, new_id


class RepeatedCreateTests(TestCase):
    def setUp(self):
        self.h = harness(self)

    async def _tag(self):
        response, _ = await self.h.request("GET", "/v1/configuration/datasets")
        return header(response, "X-Configuration-Tag")

    async def test_a_repeat_is_409_for_its_id_even_with_the_tag_it_moved(self):
        tag = await self._tag()
        body = {"primary": NODE1, "dataset_id": new_id(), "metadata": {"name": "once"}}
        conditional = dict(self.h.agent_headers(), **{"X-If-Configuration-Matches": tag})
        first, created = await self.h.request("POST", "/v1/configuration/datasets", body,
                                              headers=conditional)
        self.assertEqual(first.code, 201)
        for headers in (conditional, None):
            again, answer = await self.h.request("POST", "/v1/configuration/datasets", body,
                                                 headers=headers)
            self.assertEqual(again.code, 409)
            self.assertEqual(answer["description"],
                             "The provided dataset_id is already in use.")
        _, listed = await self.h.request("GET", "/v1/configuration/datasets")
        self.assertEqual(listed, [created])

    async def test_a_stale_tag_on_a_new_id_is_still_412(self):
        tag = await self._tag()
        await self.h.create()
        for body in ({"primary": NODE1, "dataset_id": new_id()}, {"primary": NODE1},
                     {"primary": NODE1, "dataset_id": "not-a-uuid"}):
            response, _ = await self.h.request(
                "POST", "/v1/configuration/datasets", body,
                headers=dict(self.h.agent_headers(), **{"X-If-Configuration-Matches": tag}))
            self.assertEqual(response.code, 412)

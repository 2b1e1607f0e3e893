"""LeaseKeeper: a Flocker lease held on each dataset this node uses, and the deadline by
which its users must be stopped when the lease may no longer be this node's.

It calls on_lapse when it cannot be sure the lease is still this node's: a renewal
refused (409: another node is primary or holds it), the first acquisition failing, or no
renewal getting through before the deadline

    send time of the last successful renewal + lease_seconds - fence_margin

The control service starts a lease's expiry when it receives the request, so it cannot
expire before send time + lease_seconds: stopping the users (fencing) by the deadline
means that at no instant do two nodes write.
"""

from twisted.internet.defer import Deferred, DeferredLock, gatherResults
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from powerstripflocker.clients.flocker import (
    AlreadyExists, ControlServiceUnreachable, FlockerAPIError, NotFound,
)

log = Logger()

DEFAULT_LEASE_SECONDS = 30.0


class LeaseKeeper:
    """Leases for this node on the datasets that have at least one holder.

    on_lapse(dataset_id, reason) is called when the lease may no longer be this node's
    (see the module docstring); without it a lapse is only logged (the volume plugin's
    keeper: the agent of its node fences).
    """

    def __init__(self, api, node_uuid, clock, lease_seconds=DEFAULT_LEASE_SECONDS,
                 on_lapse=None, fence_margin=None):
        self._api = api
        self._node_uuid = node_uuid
        self._clock = clock
        self.lease_seconds = lease_seconds
        self.fence_margin = lease_seconds / 4 if fence_margin is None else fence_margin
        self._on_lapse = on_lapse
        self._holders = {}      # dataset_id -> {holder: description}
        self._leased = set()    # datasets whose lease this keeper acquired
        self._confirmed = {}    # dataset_id -> send time of the last successful renewal
        self._deadlines = {}    # dataset_id -> IDelayedCall of its fencing deadline
        self._retries = {}      # dataset_id -> IDelayedCall of a renewal retried early
        self._locks = {}        # dataset_id -> DeferredLock: one call at a time per dataset
        self._queued = set()    # datasets with a renewal waiting for their lock
        self._new_users = set()  # datasets with a user not yet told to the control service
        self._renewal = LoopingCall(self._renew_all)
        self._renewal.clock = clock

    def start(self):
        """Renew every held lease three times per expiry period."""
        self._renewal.start(self.lease_seconds / 3, now=False)

    def stop(self):
        if self._renewal.running:
            self._renewal.stop()
        for calls in (self._deadlines, self._retries):
            for call in calls.values():
                if call.active():
                    call.cancel()
            calls.clear()

    def holders(self, dataset_id):
        return dict(self._holders.get(dataset_id, {}))

    def held(self):
        return {dataset_id for dataset_id, holders in self._holders.items() if holders}

    def deadline(self, dataset_id):
        """When this node must have stopped using dataset_id unless a renewal gets
        through first (None: not confirmed)."""
        sent = self._confirmed.get(dataset_id)
        return None if sent is None else sent + self.lease_seconds - self.fence_margin

    async def hold(self, dataset_id, holder, description=""):
        holders = self._holders.setdefault(dataset_id, {})
        new = holder not in holders
        holders[holder] = description
        if not new:
            return
        # A new user is told to the control service at once: its start used up the
        # claim that handed out the path (leases.py), and a dataset whose lease is not
        # confirmed (a first use, or one that started again after fencing) is checked.
        self._new_users.add(dataset_id)
        await self._renew(dataset_id)

    async def release(self, dataset_id, holder):
        holders = self._holders.get(dataset_id, {})
        holders.pop(holder, None)
        if holders:
            return
        self._holders.pop(dataset_id, None)
        self._forget(dataset_id)
        await self._serialised(dataset_id, self._release_now)

    def _forget(self, dataset_id):
        self._confirmed.pop(dataset_id, None)
        for calls in (self._deadlines, self._retries):
            call = calls.pop(dataset_id, None)
            if call is not None and call.active():
                call.cancel()

    def _serialised(self, dataset_id, function):
        lock = self._locks.setdefault(dataset_id, DeferredLock())

        def run():
            return Deferred.fromCoroutine(function(dataset_id))

        done = lock.run(run)

        def unlock(result):
            if not lock.locked and not lock.waiting:
                self._locks.pop(dataset_id, None)
            return result
        return done.addBoth(unlock)

    async def _release_now(self, dataset_id):
        if self._holders.get(dataset_id) or dataset_id not in self._leased:
            return
        self._leased.discard(dataset_id)
        self._new_users.discard(dataset_id)
        try:
            # As the holder: a claim a hook made since our users started keeps the lease.
            await self._api.release_lease(dataset_id, node_uuid=self._node_uuid)
        except NotFound:
            pass
        except (ControlServiceUnreachable, FlockerAPIError) as reason:
            log.warn("could not release lease on {dataset_id}: {reason}; it expires within "
                     "{seconds:g}s", dataset_id=dataset_id, reason=reason,
                     seconds=self.lease_seconds)
            return
        log.info("released lease on dataset {dataset_id}: nothing uses it here",
                 dataset_id=dataset_id)

    def _renew(self, dataset_id):
        """A renewal after the call under way for dataset_id (at most one waits)."""
        if dataset_id in self._queued:
            return self._locks[dataset_id].run(lambda: None)
        self._queued.add(dataset_id)
        return self._serialised(dataset_id, self._renew_now)

    async def _renew_now(self, dataset_id):
        self._queued.discard(dataset_id)
        if not self._holders.get(dataset_id):
            return
        sent = self._clock.seconds()
        new_user = dataset_id in self._new_users
        try:
            await self._api.acquire_lease(dataset_id, self._node_uuid, self.lease_seconds,
                                          new_user=new_user)
            if new_user:
                self._new_users.discard(dataset_id)
        except AlreadyExists as refused:
            self._lapse(dataset_id, f"the control service refused this node's lease: "
                                    f"{refused.description}")
            return
        except (ControlServiceUnreachable, FlockerAPIError) as reason:
            self._renewal_failed(dataset_id, reason)
            return
        first = dataset_id not in self._leased
        self._leased.add(dataset_id)
        if not self._holders.get(dataset_id):
            return      # released while the renewal was on its way: _release_now follows
        if sent > self._confirmed.get(dataset_id, float("-inf")):
            self._confirmed[dataset_id] = sent
            self._schedule_deadline(dataset_id)
        if first:
            log.info("leased dataset {dataset_id} for {seconds:g}s: in use here by {users}",
                     dataset_id=dataset_id, seconds=self.lease_seconds,
                     users=", ".join(sorted(self._holders[dataset_id].values())))

    def _schedule_deadline(self, dataset_id):
        call = self._deadlines.pop(dataset_id, None)
        if call is not None and call.active():
            call.cancel()
        delay = max(self.deadline(dataset_id) - self._clock.seconds(), 0)
        self._deadlines[dataset_id] = self._clock.callLater(
            delay, self._deadline_passed, dataset_id)

    def _deadline_passed(self, dataset_id):
        self._deadlines.pop(dataset_id, None)
        sent = self._confirmed.get(dataset_id)
        self._lapse(dataset_id, f"no renewal of its lease got through since "
                                f"{self._clock.seconds() - sent:.1f}s ago; the control "
                                f"service may let it go in {self.fence_margin:.1f}s")

    def _renewal_failed(self, dataset_id, reason):
        deadline = self.deadline(dataset_id)
        if deadline is None:
            self._lapse(dataset_id, f"its lease could not be acquired: {reason}")
            return
        log.warn("could not renew the lease on {dataset_id}: {reason}; its users here are "
                 "stopped in {seconds:.1f}s unless a renewal gets through",
                 dataset_id=dataset_id, reason=reason,
                 seconds=deadline - self._clock.seconds())
        if dataset_id not in self._retries:
            self._retries[dataset_id] = self._clock.callLater(
                min(self.lease_seconds / 10, 1.0), self._retry, dataset_id)

    def _retry(self, dataset_id):
        self._retries.pop(dataset_id, None)
        if self._holders.get(dataset_id) and dataset_id in self._confirmed:
            self._renew(dataset_id)

    def _lapse(self, dataset_id, reason):
        self._forget(dataset_id)
        self._leased.discard(dataset_id)
        if self._on_lapse is None:
            log.error("dataset {dataset_id} is used here but {reason}", dataset_id=dataset_id,
                      reason=reason)
            return
        self._on_lapse(dataset_id, reason)

    def _renew_all(self):
        # Not waited for: one slow renewal must not hold back the next round's.
        gatherResults([self._renew(dataset_id) for dataset_id in sorted(self.held())],
                      consumeErrors=True).addErrback(
            lambda failure: log.failure("renewing leases", failure))

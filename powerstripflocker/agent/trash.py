"""A deleted dataset's primary copy goes to the backend's trash and is kept keep_deleted
seconds (reported in the node report's trash, restorable meanwhile: the control service
makes this node its primary again and convergence restores it), then purged by a check
every TRASH_CHECK_LIMIT seconds at most, and at start."""

from twisted.logger import Logger

log = Logger()

DEFAULT_KEEP_DELETED = 3600.0  # seconds a deleted dataset's data is kept in the trash
TRASH_CHECK_LIMIT = 60.0  # the longest between two looks for trash entries past their time
TRASH_REPORT_LIMIT = 2048  # trash entries in a report (the newest): it must stay well
                           # within the control service's body limit


class Trash:
    """This node's trash: what goes in, what the report shows, what is purged when."""

    def __init__(self, reactor, backend, busy, node_uuid, fresh_view, on_change,
                 keep_deleted=DEFAULT_KEEP_DELETED):
        self.reactor = reactor
        self.backend = backend
        self.busy = busy
        self.node_uuid = node_uuid
        self.fresh_view = fresh_view      # async () -> an up-to-date ClusterView
        self.on_change = on_change        # the trash changed: report it
        self.keep_deleted = keep_deleted

    def check_interval(self):
        return min(max(self.keep_deleted / 4, 0.1), TRASH_CHECK_LIMIT)

    async def discard(self, dataset_id):
        """The configuration deleted dataset_id: trash its primary copy (destroy any
        other), or destroy it at once without a keep window."""
        if self.keep_deleted <= 0:
            await self.backend.destroy(dataset_id)
            log.info("destroyed dataset {dataset_id}", dataset_id=dataset_id)
            return
        entry = await self.backend.trash(dataset_id, self.reactor.seconds())
        if entry is None:
            log.info("destroyed the copy of deleted dataset {dataset_id} (not its primary)",
                     dataset_id=dataset_id)
            return
        log.info("moved deleted dataset {dataset_id} ({bytes} bytes) to the trash as "
                 "{key}; kept {keep:g}s, restorable meanwhile", dataset_id=dataset_id,
                 bytes=entry.bytes, key=entry.key, keep=self.keep_deleted)

    def report(self):
        return [{"dataset_id": entry.dataset_id, "deleted_at": entry.deleted_at,
                 "expires_at": entry.deleted_at + self.keep_deleted, "bytes": entry.bytes,
                 **({"generation": entry.generation} if entry.generation else {})}
                for entry in self.backend.trashed()[-TRASH_REPORT_LIMIT:]]

    async def purge_expired(self):
        """Purge the trash entries kept keep_deleted seconds, except those whose dataset
        a fresh view shows restored here (their restore is under way)."""
        now = self.reactor.seconds()
        expired = [entry for entry in self.backend.trashed()
                   if entry.deleted_at + self.keep_deleted <= now]
        if not expired:
            return
        try:
            view = await self.fresh_view()
        except Exception as e:
            log.warn("not purging the trash now: cannot check the configuration for "
                     "restores: {error}", error=e)
            return
        purged = False
        for entry in expired:
            configured = view.datasets.get(entry.dataset_id)
            if configured is not None and not configured.deleted \
                    and configured.primary == self.node_uuid:
                continue
            if not self.busy.lock(entry.dataset_id, "purge"):
                continue
            try:
                await self.backend.purge(entry.key)
                purged = True
                log.info("removed dataset {dataset_id} from the trash: deleted "
                         "{seconds:.0f}s ago, kept {keep:g}s ({bytes} bytes)",
                         dataset_id=entry.dataset_id, seconds=now - entry.deleted_at,
                         keep=self.keep_deleted, bytes=entry.bytes)
            except Exception as e:
                log.error("cannot remove {key} from the trash: {error}", key=entry.key,
                          error=e)
            finally:
                self.busy.unlock(entry.dataset_id)
        if purged:
            self.on_change()

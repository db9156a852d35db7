"""Torchrun ranks played by threads of one process, for tests of what each rank does (no process group needed)."""


class ThreadRanks:
    """Two torchrun ranks played by two threads of this process: gather and all-reduce meet at a barrier."""

    def __init__(self, world: int = 2) -> None:
        import threading

        self.world, self.local = world, threading.local()
        self.barrier, self.slots = threading.Barrier(world, timeout=120), [None] * world

    def rank(self) -> int:
        return self.local.rank

    def gather(self, value):
        self.slots[self.rank()] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()  # nobody writes the next round's slot before everyone has read this one
        return out

    def all_reduce_sum(self, values):
        return sum(part.double() for part in self.gather(values.clone()))

    def broadcast_from_main(self, value):
        return self.gather(value)[0]

    def play_torchrun(self, monkeypatch) -> None:
        """Make tatl.distributed's ranks and collectives these threads' (every collective tatl code calls must be
        one of these: any other would look for a process group)."""
        from tatl import distributed

        for name, value in {"is_distributed": lambda: True, "rank": self.rank, "world_size": lambda: self.world,
                            "barrier": self.barrier.wait, "gather_from_ranks": self.gather,
                            "all_reduce_sum": self.all_reduce_sum, "broadcast_from_main": self.broadcast_from_main,
                            }.items():
            monkeypatch.setattr(distributed, name, value)

    def run(self, work) -> list:
        import threading

        results, errors = [None] * self.world, []

        def play(rank: int) -> None:
            self.local.rank = rank
            try:
                results[rank] = work()
            except BaseException as error:  # reported below; the other thread must not wait for ever
                errors.append(error)
                self.barrier.abort()

        threads = [threading.Thread(target=play, args=(rank,)) for rank in range(self.world)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results

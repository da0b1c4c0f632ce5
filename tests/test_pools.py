"""A step left waiting for a pool slot that is free gets it (mt_run.runs.assign_waiting_steps): Dagster's claim checks
for a free slot and enqueues the step in two transactions, so a slot freed between them wakes nobody."""
import dagster as dg

from mt_run.runs import assign_waiting_steps


def test_a_step_nobody_woke_gets_the_free_slot_and_no_more():
    with dg.instance_for_test() as inst:
        st = inst.event_log_storage
        st.set_concurrency_slots("judge", 1)
        # the race's outcome: enqueued as waiting (the slot looked taken), and the slot freed before the enqueue
        st.add_pending_step("judge", "run-a", "alignment_scores", should_assign=False)
        assert not st.check_concurrency_claim("judge", "run-a", "alignment_scores").is_assigned
        for _ in range(3):  # Dagster alone never hands it the free slot: the run would wait forever
            assert not st.claim_concurrency_slot("judge", "run-a", "alignment_scores").is_claimed
        assert assign_waiting_steps(inst) == ["judge"]
        assert st.claim_concurrency_slot("judge", "run-a", "alignment_scores").is_claimed
        # a second waiting step gets nothing while the one slot is held, nor while an assigned step has yet to claim
        st.add_pending_step("judge", "run-b", "alignment_scores", should_assign=False)
        assert assign_waiting_steps(inst) == []
        st.free_concurrency_slots_for_run("run-a")
        status = st.check_concurrency_claim("judge", "run-b", "alignment_scores")
        if not status.is_assigned:  # Dagster's own wake-up may have handed it over already
            assert assign_waiting_steps(inst) == ["judge"]
        assert assign_waiting_steps(inst) == []
        assert st.claim_concurrency_slot("judge", "run-b", "alignment_scores").is_claimed

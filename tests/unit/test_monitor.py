"""The monitor window judged (orchestrator.core.monitor, pure)."""

from types import SimpleNamespace as C

from orchestrator.core.monitor import Watched, problem_text, problems, replica_problem


def c(id, state="running", health="", restarts=0, exit_code=0):
    return C(id=id, state=state, health=health, restart_count=restarts, exit_code=exit_code)


def test_what_a_watched_container_can_have_done():
    assert replica_problem(c("a")) == ""
    assert replica_problem(None) == "was removed"
    assert replica_problem(c("a", state="exited", exit_code=3)) == "is exited (exit code 3)"
    assert replica_problem(c("a", health="unhealthy")) == "became unhealthy"
    assert replica_problem(c("a", restarts=2)) == "restarted 2 time(s)"
    assert replica_problem(c("a", health="starting")) == ""


def test_only_the_watched_containers_of_each_node_read_are_judged():
    watch = [Watched("n1", "web", 1, "a", 0.0, 5.0), Watched("n1", "web", 2, "b", 0.0, 0.0),
             Watched("n2", "api", 1, "x", 0.0, 0.0)]
    states = {"n1": C(containers=[c("a", restarts=1), c("b"), c("zzz", state="dead")])}  # n2 not read
    got = problems(watch, states)
    assert [(w.container_id, bad) for w, bad in got] == [("a", "restarted 1 time(s)")]
    assert problem_text(*got[0]) == "service web replica 1 on n1 restarted 1 time(s) within 5s of its update " \
                                    "(update_config.monitor)"
    gone = problems(watch, {"n2": C(containers=[])})
    assert problem_text(*gone[0]) == ("service api replica 1 on n2 was removed before the update ended "
                                      "(its later batches and waves)")


def test_a_job_that_ran_to_completion_is_done_not_failed():
    # A replaced `restart: "no"` job (a migration) exits 0 before the update ends: done.
    done = c("j", state="exited", exit_code=0)
    assert replica_problem(done, one_shot=True) == ""
    assert replica_problem(done) == "is exited (exit code 0)"  # a service meant to keep running
    assert replica_problem(c("j", state="exited", exit_code=1), one_shot=True) == "is exited (exit code 1)"
    assert replica_problem(c("j", state="exited", exit_code=0, restarts=1), one_shot=True) == "is exited (exit code 0)"
    watch = [Watched("n1", "migrate", 1, "j", 0.0, 0.0, one_shot=True)]
    assert problems(watch, {"n1": C(containers=[done])}) == []


def test_which_restart_policies_make_a_one_shot():
    from agent.wire.spec import stays_exited

    assert [p for p in ("no", "on-failure", "on-failure:3", "always", "unless-stopped") if stays_exited(p)] == \
        ["no", "on-failure", "on-failure:3"]

"""Fixtures for the end-to-end suite.

Each test gets its own work directory, its own embedded broker (so topics and
consumer groups never leak between tests), its own database in the session's
throwaway PostgreSQL cluster (migrated with hookbridge-migrate), and a process
group that stops everything it started when the test ends, pass or fail. The
logs of a failed test's processes are printed with the failure.

Apache Kafka (hbtest/kafka.py has the details): a test marked
@pytest.mark.apache runs twice, on the devbroker and on one Apache Kafka
broker shared by the tests of a pytest-xdist worker (in its own topics and
consumer groups); HOOKBRIDGE_TEST_KAFKA=apache runs every test that uses the
`broker` fixture on Apache Kafka. Tests on Apache Kafka are kept in one
xdist group (`--dist loadgroup`), so one worker starts one broker.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from hbtest.pg import db_url, pg_cluster  # noqa: E402,F401
# fixtures some modules share with others (pytest finds them here)
from test_filter_sql import c_filter, conn  # noqa: E402,F401
from test_migrate_layout import tree  # noqa: E402,F401
from hbtest.procs import BIN, ProcessGroup  # noqa: E402
from hbtest.kafka import ApacheKafka  # noqa: E402
from hbtest.stack import Broker  # noqa: E402

BROKER_KIND = os.environ.get("HOOKBRIDGE_TEST_KAFKA", "devbroker")
# The sanitizer build (make test-asan), as test_tls_memory.py and others tell it.
SANITIZED = BIN.name == "bin-san"


def pytest_configure(config):
    config.addinivalue_line("markers", "apache: run this test on the devbroker and on "
                            "Apache Kafka (the broker / new_broker fixtures)")
    config.addinivalue_line("markers", "sql_only: runs none of our programs, only SQL "
                            "against PostgreSQL: skipped in the sanitizer pass (make "
                            "test-asan), where it would repeat the normal pass exactly")
    config.addinivalue_line("markers", "runs_programs: in a sql_only module, a test that "
                            "runs one of our programs (the sanitizer pass runs it)")
    config.addinivalue_line("markers", "no_programs: runs none of our programs (the test "
                            "harness's own tools, the build): skipped in the sanitizer "
                            "pass, where it would repeat the normal pass exactly")


def pytest_generate_tests(metafunc):
    if "broker_kind" not in metafunc.fixturenames:
        return
    if BROKER_KIND == "apache":
        kinds = ["apache"]
    elif metafunc.definition.get_closest_marker("apache"):
        kinds = ["devbroker", "apache"]
    else:
        return
    metafunc.parametrize("broker_kind", kinds, indirect=True)


# tryfirst: pytest-xdist's own hook (--dist loadgroup) reads the xdist_group
# marks to group the tests; after it, the marks added here would be ignored
# and every worker would start an Apache Kafka of its own.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if (SANITIZED and item.get_closest_marker("sql_only")
                and not item.get_closest_marker("runs_programs")):
            item.add_marker(pytest.mark.skip(
                reason="SQL only: no program of ours to check under the sanitizers"))
        if SANITIZED and item.get_closest_marker("no_programs"):
            item.add_marker(pytest.mark.skip(
                reason="no program of ours to check under the sanitizers"))
        cs = getattr(item, "callspec", None)
        names = getattr(item, "fixturenames", ())
        if ((cs is not None and cs.params.get("broker_kind") == "apache")
                or "apache_kafka" in names or "apache_kafka_cluster" in names):
            item.add_marker(pytest.mark.xdist_group("apache-kafka"))
    # The longest tests first (LONG_FIRST, longest first), the SQL-only tests
    # (hundreds, each well under a second) last: xdist hands out tests in
    # this order, so the workers end together on short ones instead of one
    # finishing a long test while the others idle. (The Apache Kafka group
    # goes where its first test is: early, as it is the longest unit.)
    items.sort(key=lambda item: (item.get_closest_marker("sql_only") is not None,
                                 _long_rank(item)))


# Tests measured at 15 s or more (in either pass, on the 2-core machine),
# longest first. Only the order depends on this list: a test missing from
# it runs all the same, just not ahead of the rest.
LONG_FIRST = (
    # opt-in (HOOKBRIDGE_TEST_OLD_BIN), about 75 s
    "test_review68_faults.py::test_a_rolling_upgrade_with_old_and_new_side_by_side_loses_and_repeats_nothing",
    "test_review69_faults.py::test_a_verification_no_dispatcher_can_load_says_why_and_changes_nothing_else",
    "test_review69_faults.py::test_a_challenge_to_an_endpoint_that_stays_busy_says_so_after_its_tries",
    "test_review66_faults.py::test_a_preview_to_an_endpoint_that_stays_busy_fails_after_its_tries_saying_why",
    "test_rebalance_held.py::test_ordered_deliveries_waiting_behind_their_key_are_not_delivered_twice_on_scale_out",
    "test_review29_faults.py::test_a_stream_to_brokers_that_answered_at_start_rides_out_an_outage_longer_than_30_s",
    "test_review5_faults.py::test_a_batch_waiting_for_its_turn_loses_the_events_of_revoked_partitions",
    "test_promises2.py::test_healthz_turns_503_when_the_main_loop_is_stuck_for_30_s_and_200_when_it_turns",
    "test_review71_faults.py::test_poison_messages_at_300_a_second_are_counted_not_logged_each",
    "test_review14_faults.py::test_an_endpoint_failing_every_delivery_does_not_flood_the_log",
    "test_ingest.py::test_bad_requests_in_bulk_do_not_flood_the_log_and_every_client_is_named",
    "test_review48_faults.py::test_a_deactivation_made_while_the_old_database_address_went_silent_applies_within_25_s",
    "test_rebalance_held.py::test_what_was_answered_but_not_logged_yet_is_not_delivered_twice_on_scale_out",
    "test_review64_faults.py::test_a_retry_due_while_the_store_s_backend_answers_nothing_goes_within_25_s",
    "test_review64_faults.py::test_a_run_whose_local_queue_stays_full_30_s_stops_and_says_where_to_go_on",
    "test_make_run.py::test_make_run_explains_a_retry_it_gave_up_waiting_for",
    "test_review48_faults.py::test_a_retry_due_when_the_database_went_silent_waits_for_the_subscriptions",
    "test_rebalance_held.py::test_events_waiting_in_a_batch_are_not_delivered_twice_on_scale_out",
    "test_kafka_faults.py::test_the_whole_cluster_restarted_services_recover_and_retries_fire",
    "test_pacing.py::test_a_burst_drains_at_the_endpoints_pace_parking_each_delivery_about_once",
    "test_review47_faults.py::test_retries_held_for_the_subscriptions_count_as_late",
    "test_ops.py::test_sigterm_drains_in_flight_deliveries_then_a_restart_resends_nothing_acknowledged",
    "test_rate_limit.py::test_two_dispatchers_share_one_budget",
    "test_ops.py::test_a_second_sigterm_stops_at_once_and_loses_nothing",
    "test_ops.py::test_readyz_follows_the_database_and_recovers",
    "test_review21_faults.py::test_a_dead_letter_topic_the_service_may_not_write_makes_it_not_ready_until_allowed",
    "test_lifecycle.py::test_a_challenge_whose_dispatcher_dies_is_sent_again_after_its_lease",
    "test_review47_faults.py::test_an_ordered_retry_whose_predecessor_settled_while_the_subscriptions_were_away_is_sent",
    "test_isolation.py::test_a_short_pause_only_stops_taking_messages_a_lasting_one_stops_fetching",
    "test_rebalance_held.py::test_a_backlog_waiting_for_connections_is_not_delivered_twice_on_scale_out",
    "test_review22_faults.py::test_a_large_replay_of_a_rate_limited_subscription_is_paced_not_churned",
    # 24-30 s in CI 107 and 116, 29 s, 21 s and 23 s here (session 32)
    "test_review42_faults.py::test_a_large_backlog_on_the_spool_does_not_hold_the_start",
    "test_review70_faults.py::test_a_broker_stamping_retries_90_s_behind_neither_floods_the_tier_nor_sends_early",
    "test_deploy.py::test_runtime_packages_provide_every_library_the_binaries_link",
    "test_review33_kafka_security.py::test_services_over_sasl_ssl_deliver_retry_and_recover_from_a_wrong_password",
    "test_review45_faults.py::test_a_retry_due_before_the_retrier_has_its_subscriptions_again_waits_for_them",
    "test_rebalance_held.py::test_a_backlog_held_by_a_rate_limit_is_not_delivered_twice_on_scale_out",
    "test_review7_faults.py::test_a_replay_whose_retrier_died_after_queueing_it_is_sent_once_more_not_twice",
    "test_review48_faults.py::test_a_server_that_ends_idle_sessions_does_not_make_the_store_reload_again_and_again",
    "test_review47_faults.py::test_a_deactivation_applies_before_later_events_while_changes_keep_coming_on_a_slow_database",
    "test_change_before_event.py::test_an_event_published_after_activate_or_deactivate_returned_follows_it",
    "test_change_before_event.py::test_events_wait_for_a_database_that_answers_nothing_about_a_second_once",
    "test_review82_faults.py::test_events_held_for_a_slow_sync_behind_one_waiting_for_its_schema_keep_their_order",
    "test_review82_faults.py::test_events_taken_for_a_sync_count_against_the_payload_budget",
    "test_review82_faults.py::test_events_matched_without_the_database_s_answer_are_counted_and_said",
    "test_review82_faults.py::test_events_wait_for_a_slow_database_s_answer_a_second_at_most",
    # 24-28 s in CI 105, 106 and 116, 13-16 s here (session 32)
    "test_review14_faults.py::test_a_database_not_answering_bounds_the_delivery_log_rows_held",
    "test_build.py::test_a_second_make_rebuilds_nothing",
    "test_review43_faults.py::test_a_replay_round_holds_a_few_mib_of_the_spool_not_hundreds",
    "test_review85_faults.py::test_keys_of_an_ordered_subscription_seen_once_do_not_pile_up_in_memory",
    "test_review19_faults.py::test_batches_filling_at_max_pending_bytes_go_at_once",
    "test_kafka_faults.py::test_a_delay_tier_leader_moved_while_retries_wait",
    "test_review44_faults.py::test_how_late_the_retrier_takes_up_retries_is_on_its_metrics",
    "test_isolation.py::test_a_hung_endpoint_stops_neither_a_healthy_one_nor_the_offsets",
    "test_review11_faults.py::test_a_try_later_answer_to_the_challenge_is_asked_again_not_recorded",
    "test_review3_faults.py::test_a_delivery_still_waiting_when_the_stop_s_drain_ends_is_answered_503",
    "test_review11_faults.py::test_a_new_verification_request_gets_its_own_try_later_span",
    "test_review17_faults.py::test_a_passing_failure_of_an_active_subscription_s_challenge_does_not_deactivate_it",
    "test_ordering.py::test_events_waiting_behind_a_head_are_asked_about_again_when_it_is_due",
    "test_review55_faults.py::test_a_primary_read_only_for_long_neither_floods_the_retriers_log_nor_reconnects_each_second",
    "test_rate_limit.py::test_a_retry_the_limit_holds_back_is_due_again_in_the_first_tier_not_its_own",
    "test_review20_faults.py::test_one_large_event_matching_a_thousand_subscriptions_stays_within_the_budget",
    "test_review20_faults.py::test_a_bulk_change_of_thousands_of_subscriptions_does_not_stall_deliveries",
    "test_tls.py::test_new_connections_resume_the_tls_session_of_earlier_ones",
    "test_promises4.py::test_changes_made_while_the_database_is_away_apply_once_it_is_back",
    "test_ops.py::test_sigterm_with_every_broker_down_exits_within_the_grace_period",
    "test_make_run.py::test_make_run_demo_then_ctrl_c_leaves_nothing",
    "test_review20_faults.py::test_a_fan_out_stopped_half_way_is_finished_by_the_next_start",
    "test_review_faults.py::test_a_stale_copy_of_the_head_s_retry_does_not_release_its_key",
    "test_review20_faults.py::test_a_bulk_url_change_does_not_hold_the_rate_limited_subscriptions_back",
    "test_review31_faults.py::test_names_that_resolve_slowly_or_not_at_all_cost_only_their_own_deliveries",
    "test_promises3.py::test_a_database_that_accepts_but_does_not_answer_makes_the_service_not_ready",
    "test_isolation.py::test_a_pause_longer_than_max_poll_interval_keeps_the_group_and_delivers_once",
    "test_review5_faults.py::test_a_producer_that_can_no_longer_produce_stops_the_dispatcher",
    "test_final_state.py::test_a_delivered_delivery_stays_delivered_when_the_dispatcher_resends_it_and_it_fails",
    "test_promises3.py::test_every_broker_down_is_seen_within_seconds_counted_and_said_once_each_way",
    "test_review71_faults.py::test_an_ordered_subscription_whose_head_fails_at_300_events_a_second_says_why_not_each",
    "test_review71_faults.py::test_the_dispatcher_says_once_that_it_cannot_list_pending_requests_and_when_it_can_again",
    "test_rate_limit.py::test_a_deactivation_drops_the_held_deliveries_even_if_activated_again",
    "test_review17_faults.py::test_a_delivery_log_the_database_refuses_makes_the_service_not_ready_with_the_reason",
    "test_promises4.py::test_a_request_still_running_at_the_drain_deadline_is_abandoned_and_sent_again",
    "test_secrets.py::test_an_upgrade_seals_what_earlier_versions_stored_in_plaintext",
    "test_review25_faults.py::test_a_batch_refused_with_413_on_a_retry_goes_on_in_halves_across_a_crash",
    "test_review9_faults.py::test_sigterm_while_the_database_does_not_answer_exits_0_in_time_and_loses_nothing",
    "test_review_faults.py::test_a_delivery_held_by_its_rate_limit_follows_its_new_url_s_circuit",
    "test_rate_limit.py::test_deliveries_held_by_the_limit_follow_a_deactivation",
    "test_review31_faults.py::test_many_hung_hosts_one_request_each_leave_the_kept_slots_to_a_healthy_one",
    "test_review32_faults.py::test_an_open_circuit_is_not_forgotten_between_two_waves_of_retries",
    "test_promises2.py::test_two_retriers_share_a_tier_and_one_killed_loses_nothing",
    "test_final_state.py::test_a_retry_after_longer_than_every_tier_holds_up_no_retry_behind_it",
    "test_promises3.py::test_sigterm_while_the_database_is_away_exits_0_in_time_and_loses_nothing",
    "test_review24_faults.py::test_hosts_whose_requests_time_out_do_not_take_the_slots_kept_for_hosts_that_answer",
    "test_connections.py::test_connections_are_kept_for_as_many_hosts_as_max_connections_allows",
    "test_final_state.py::test_a_dispatcher_resending_a_final_failure_after_a_crash_does_not_dead_letter_it_twice",
    "test_review7_faults.py::test_attempts_the_retrier_s_circuit_skipped_are_not_the_endpoint_s_failures",
    "test_review63_faults.py::test_a_retry_dropped_between_replay_dropped_s_two_looks_is_counted_and_delivered",
    "test_review64_faults.py::test_a_deleted_topic_s_revoked_partitions_are_not_said_to_have_a_new_owner",
    "test_review64_faults.py::test_the_delivery_log_refused_by_a_read_only_server_backs_off_250_ms_doubling_to_5_s",
    "test_review64_faults.py::test_a_store_lane_whose_writes_a_read_only_server_keeps_refusing_backs_off_1_2_4_5_s",
    "test_review84_faults.py::test_a_request_the_endpoint_took_and_never_answered_is_a_timeout_not_a_connect_timeout",
    # 18 s here (Apache Kafka; the database held 6-9 s)
    "test_review86_faults.py::test_partitions_assigned_while_a_service_waits_for_the_database_are_fetched_after",
)
_LONG_RANK = {name: i for i, name in enumerate(LONG_FIRST)}


def _long_rank(item):
    """Position in LONG_FIRST (file::function, parameters aside), or after it."""
    name = item.nodeid.rsplit("/", 1)[-1].split("[", 1)[0]
    return _LONG_RANK.get(name, len(LONG_FIRST))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    group = getattr(item, "_hb_procs", None)
    if rep.when == "call" and rep.failed and group is not None:
        rep.sections.append(("hookbridge processes", group.dump()))


@pytest.fixture
def workdir(tmp_path):
    os.chmod(tmp_path, 0o755)
    return tmp_path


@pytest.fixture
def procs(request, workdir):
    group = ProcessGroup(workdir)
    request.node._hb_procs = group
    yield group
    group.stop_all()
    # Under ASan/UBSan (make test-asan) a report in any process fails the test.
    for p in group.procs:
        out = p.output()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            assert marker not in out, f"{p.name}: sanitizer report\n{out[-8000:]}"


@pytest.fixture(scope="session")
def apache_kafka():
    """One Apache Kafka node (KRaft) for this worker's session, started on
    first use: .bootstrap, .space() for a test's own topics (hbtest/kafka.py)."""
    k = ApacheKafka(nodes=1)
    yield k
    k.stop()


@pytest.fixture(scope="session")
def apache_kafka_cluster():
    """Three Apache Kafka nodes (replication factor 3, min.insync.replicas=2)
    for this worker's session, started on first use (about 7 s): the same API
    as apache_kafka, plus kill_node(i) / start_node(i) + wait_node(i), i in 1..3."""
    k = ApacheKafka(nodes=3)
    yield k
    k.stop()


@pytest.fixture
def broker_kind(request):
    """"devbroker" or "apache" (parametrised by @pytest.mark.apache)."""
    return getattr(request, "param", BROKER_KIND)


@pytest.fixture
def new_broker(request, broker_kind, procs, workdir):
    """Factory: new_broker(retry_schedule=None) -> this test's broker, the
    devbroker or a TopicSpace (with its topics) on Apache Kafka."""
    def make(retry_schedule=None):
        if broker_kind == "apache":
            return request.getfixturevalue("apache_kafka").space(retry_schedule=retry_schedule)
        return Broker(procs, workdir, retry_schedule=retry_schedule)
    return make


@pytest.fixture
def broker(new_broker):
    return new_broker()

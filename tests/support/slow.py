"""The tests the fast subset, ``pytest -m "not slow"``, leaves out (tests/conftest.py marks
them)."""

from __future__ import annotations

# The fast subset, `pytest -m "not slow"`, leaves out what makes the suite take 15 minutes
# and more on two cores: whole modules whose tests each drive the real CLI, a server or a
# worker in subprocesses, and single tests that took 2.5 s or more (a few of 1.5 s or more)
# in a full run with --durations=0 (2026-12-04). CI runs everything.
# Paths are relative to tests/; tests/project/test_fast_subset.py checks that each name exists.
SLOW_MODULES = frozenset(
    {
        "app/api/danbooru/test_danbooru_clients.py",
        "app/api/test_api_fuzz.py",
        "app/api/test_serve_e2e.py",
        "app/api/test_serve_workers.py",
        "app/search/test_segments.py",
        "app/tagger/test_tag_defaults.py",
        "app/tagrules/test_tag_rules_cli.py",
        "bench/test_bench_gpu.py",
        "indexer/test_cli_output.py",
        "indexer/test_cli_tag.py",
        "indexer/test_crash_jobs.py",
        "indexer/test_export_job_lock.py",
        "indexer/test_first_use.py",
        "indexer/test_index_crash.py",
        "indexer/test_index_diskfull.py",
        "indexer/test_ray_cluster.py",
        "indexer/test_ray_index_crash.py",
        "indexer/test_search_cli.py",
        "indexer/test_tag_dataset_crash.py",
        "indexer/test_up.py",
        "indexer/test_worker.py",
    }
)
SLOW_TESTS = frozenset(
    {
        "app/api/test_api_outage.py::test_a_restart_under_load_gives_503s_then_recovers",
        "app/api/test_api_outage.py::test_the_server_rides_out_a_database_restart",
        "app/api/test_file_race.py::test_a_folder_swapped_for_a_symlink_never_serves_outside_files",
        "app/api/test_openapi.py::test_a_generated_client_uploads_files",
        "app/api/test_pixel_bombs.py::test_bombs_over_the_upload_limit_are_refused_from_the_header",
        "app/api/test_reliability.py::test_generated_queries_never_cause_a_server_error",
        "app/api/test_reliability.py::test_hostile_uploads_get_a_4xx_with_a_message_and_the_server_stays_up",
        "app/api/test_serve_limits.py::test_a_slow_body_is_not_cut_by_the_header_timeout",
        "app/api/test_serve_limits.py::test_a_slowloris_client_is_disconnected_after_the_header_timeout",
        "app/api/test_serve_limits.py::test_with_two_workers_each_worker_keeps_the_header_timeout",
        "app/search/test_engines.py::test_every_engine_answers_as_the_brute_force",
        "app/search/test_paging_walk.py::test_walking_presorted_images_pages_like_sorting",
        "app/search/test_search_service.py::test_concurrent_searches_while_the_index_changes",
        "app/search/test_search_service.py::test_every_order_pages_like_a_brute_force_sort",
        "app/search/test_search_service.py::test_similarity_by_embedding_with_a_filter_and_duplicates",
        "app/search/test_search_sql.py::test_posting_engine_equals_sql_and_brute_force",
        "app/search/test_search_sql.py::test_sql_engine_equals_brute_force_on_random_queries",
        "app/store/test_vector_files.py::test_damaged_files_are_rebuilt_from_the_database",
        "app/tagger/test_onnx_fetch.py::test_fetch_onnx_repo_whole",
        "app/tagger/test_onnx_fetch.py::test_interrupted_fetch_leaves_no_partial_directory",
        "app/tagger/test_onnx_tagger.py::test_cli_reports_a_bad_layout_in_one_line",
        "app/tagger/test_onnx_tagger.py::test_index_with_pth_then_extend_and_search_with_onnx",
        "app/tagger/test_onnx_tagger.py::test_model_info_names_layout_and_runtime",
        "app/tagger/test_onnx_tagger.py::test_tag_through_onnx_runtime_equals_the_torch_path",
        "app/tagger/test_onnx_tagger.py::test_wd_onnx_has_no_embedding_so_it_cannot_index",
        "app/tagger/test_onnx_tagger.py::test_wd_onnx_tags_like_the_safetensors_model",
        "app/tagger/test_tagger_load.py::test_pixai_without_config_uses_the_wd_eva02_large_architecture",
        "indexer/test_import.py::test_bad_rows_are_rejected_with_their_reason",
        "indexer/test_import.py::test_cli_import",
        "indexer/test_import.py::test_cli_import_of_more_rows_than_a_batch_on_sqlite",
        "indexer/test_import.py::test_jsonl_with_row_aligned_npy",
        "indexer/test_import.py::test_the_child_reader_reports_file_level_errors_and_writes_nothing",
        "indexer/test_index.py::test_a_second_writer_is_refused_while_one_runs",
        "indexer/test_index.py::test_cli_refuses_an_unmigrated_database_then_indexes",
        "indexer/test_index.py::test_cli_reports_links_out_of_the_library",
        "indexer/test_ray_index.py::test_a_killed_actor_is_restarted_and_the_result_is_exact",
        "indexer/test_ray_index.py::test_ray_index_equals_a_local_index_through_changes",
        "indexer/test_reindex.py::test_a_finished_reindex_records_every_image_done",
        "indexer/test_reindex_live.py::test_search_answers_throughout_a_reindex_and_its_swap",
        "project/test_tooling.py::test_tool_passes",
    }
)

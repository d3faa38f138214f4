"""The search service the settings describe: the one builder the server and the CLI use, so
a setting that changes search (aliases, engine, thresholds, implications, limits) reaches
both the same way."""

from __future__ import annotations

from sqlalchemy import Engine

from app.search.service import EngineKind, SearchService
from app.settings import Settings
from app.store.aliases import load_aliases
from app.tagrules.configured import search_implications


def search_service(
    engine: Engine,
    settings: Settings,
    kind: EngineKind | None = None,
    *,
    prefetch_vectors: bool = False,
) -> SearchService:
    """``kind`` overrides SAGASHI_SEARCH_ENGINE (``sagashi search --engine``); the server
    prefetches the FAISS files so its first similarity search is as fast as the rest.
    A bad alias or rules file raises its error (AliasError, RulesError) with the file."""
    return SearchService(
        engine,
        settings.data_dir,
        load_aliases(settings.alias_file),
        kind or settings.search_engine,
        duplicate_similarity=settings.duplicate_similarity,
        max_terms=settings.max_query_terms,
        defaults=settings.tag_defaults().thresholds(),
        prefetch_vectors=prefetch_vectors,
        implications=search_implications(settings),
    )

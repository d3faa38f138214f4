"""Request and response bodies, as pydantic models (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.settings import Probability


class ErrorDetail(BaseModel):
    code: str
    message: str
    position: int | None = Field(
        default=None, description="Character offset in the query, for query errors."
    )


class ErrorBody(BaseModel):
    error: ErrorDetail


class TagScoreOut(BaseModel):
    name: str
    score: float
    group: str


class TagDropOut(BaseModel):
    rule: Literal["contradiction", "overlap"] = Field(
        description="contradiction: a tag it excludes scores higher; overlap: a more "
        "specific tag implying it is kept."
    )
    by: str = Field(description="The tag that wins.")


class ImageTagOut(TagScoreOut):
    count: int = Field(description="Images of the index with this tag at the default threshold.")
    confident: bool = Field(
        description="The tag's search at the thresholds in force finds this image: its score, "
        "or that of a tag implying it, reaches the group's threshold."
    )
    implied_by: str | None = Field(
        default=None,
        description="Confident only through this tag, which implies it (score 0: not stored).",
    )
    dropped: TagDropOut | None = Field(
        default=None, description="Captions and tag lists leave this confident tag out: why."
    )


class SearchItem(BaseModel):
    id: int
    path: str
    width: int
    height: int
    similarity: float | None = None
    tags: list[TagScoreOut] = Field(description="The image's top tags at the thresholds used.")


class ClosestTag(BaseModel):
    name: str = Field(description="A tag of the index.")
    group: str
    count: int = Field(description="Images with the tag at the default threshold.")
    similarity: float = Field(description="Trigram similarity to the unknown tag (0..1).")
    alias: str | None = Field(default=None, description="The alias of it that matched.")


class UnknownTagOut(BaseModel):
    tag: str = Field(description="A tag of the query that the index does not know.")
    suggestions: list[ClosestTag] = Field(description="The closest known tags, best first.")


class SearchResponse(BaseModel):
    items: list[SearchItem]
    next_cursor: str | None
    count: int = Field(description="Images matching the filter.")
    estimated: bool = Field(description="True when count is an estimate.")
    engine: str
    plan: str | None = Field(default=None, description="kNN strategy of a similarity search.")
    suggestions: list[UnknownTagOut] = Field(
        default_factory=list,
        description="Tags of the query the index does not know (they match nothing), each "
        "with the closest known tags: did you mean.",
    )
    notice: str | None = Field(
        default=None, description="Why there is nothing to show, e.g. an empty index."
    )


class ImageDetail(BaseModel):
    id: int
    path: str
    width: int
    height: int
    size_bytes: int
    format: str
    sha256: str
    indexed_at: str
    generation: int
    thresholds: dict[str, float] = Field(
        description="The per-group thresholds in force: the request's threshold_* parameters, "
        "else the server's defaults."
    )
    tags: list[ImageTagOut] = Field(
        description="Every stored tag (down to the storage floor), by score; confident says "
        "whether it reaches its group's threshold, so a search for it finds this image."
    )


class SimilarRequest(BaseModel):
    """Exactly one of image_id, image (base64) or url names the query image."""

    model_config = ConfigDict(extra="forbid")

    image_id: int | None = Field(default=None, ge=1)
    image: str | None = Field(default=None, description="Base64 image bytes (or a data: URL).")
    url: str | None = Field(default=None, max_length=4096)
    q: str = Field(default="", max_length=10_000, description="Filter, in query syntax.")
    k: int = Field(default=40, ge=1, le=1000)
    hide_duplicates: bool = False
    cursor: str | None = Field(default=None, max_length=512)


class TagSuggestion(BaseModel):
    name: str
    group: str
    count: int
    alias_of: str | None = Field(
        default=None, description="Set when the typed text matched an alias of this tag."
    )


class TagDefaultsOut(BaseModel):
    """The thresholds a term or request without its own uses (SAGASHI_THRESHOLD_*)."""

    thresholds: dict[str, float]
    top_k: int
    url_fetch: bool = Field(
        description="Whether POST /api/similar downloads a query image from a url "
        "(SAGASHI_URL_FETCH); the gallery shows its URL field only then."
    )


class RelatedTag(BaseModel):
    name: str
    group: str
    count: int
    frequency: float = Field(description="Share of the tag's images that also have this tag.")
    cosine: float = Field(description="Co-occurrence / sqrt(count(a) * count(b)).")


class RelatedResponse(BaseModel):
    tag: str
    count: int
    sampled: int = Field(description="Images of the tag the co-occurrences were counted on.")
    related: list[RelatedTag]


class PixaiInputs(BaseModel):
    url: str | None = Field(default=None, max_length=4096)
    image: str | None = Field(default=None, description="Base64 image bytes.")


class PixaiParameters(BaseModel):
    """Left out, each is the server's default: SAGASHI_TOP_K, SAGASHI_THRESHOLD_GENERAL and
    SAGASHI_THRESHOLD_CHARACTER (the card's 128, 0.30 and 0.75 unless set)."""

    top_k: int | None = Field(default=None, ge=1, le=100_000)
    threshold_general: Probability | None = None
    threshold_character: Probability | None = None


class PixaiRequest(BaseModel):
    inputs: PixaiInputs
    parameters: PixaiParameters = Field(default_factory=PixaiParameters)


class PixaiTag(BaseModel):
    tag: str
    score: float
    group: str


class ClassificationParameters(BaseModel):
    """What huggingface_hub's ``image_classification`` sends as its parameters."""

    top_k: int | None = Field(default=None, ge=1, le=100_000, description="At most this many.")
    function_to_apply: Literal["sigmoid"] | None = Field(
        default=None, description="Only sigmoid: a tagger's scores are independent."
    )


class ClassificationRequest(BaseModel):
    """Hugging Face's image classification with parameters: the image as base64."""

    inputs: str = Field(description="Base64 image bytes (or a data: URL).")
    parameters: ClassificationParameters = Field(default_factory=ClassificationParameters)


class ClassificationLabel(BaseModel):
    label: str
    score: float


class EvaluateItem(BaseModel):
    filename: str
    tags: dict[str, float]
    error: ErrorDetail | None = Field(
        default=None,
        description="Why this file was not tagged (several files only: one file that "
        "cannot be tagged answers the error status itself); its tags are then empty.",
    )


class AdminJobRequest(BaseModel):
    # protected_namespaces: as in app.settings, for model_dir under pydantic before 2.10
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    action: Literal["index", "reindex", "rebuild_faiss"]
    paths: list[str] = Field(
        default_factory=list, max_length=1000, description="Absolute folders, for index."
    )
    model_dir: str | None = Field(
        default=None, max_length=4096, description="Model directory on the worker's host."
    )
    where: str | None = Field(
        default=None, max_length=10_000, description="reindex: only what this query matches."
    )


class ExportJobRequest(BaseModel):
    """An export of a search into a dataset folder under SAGASHI_EXPORT_DIR."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=255,
        description="The dataset folder's name, created under the worker's SAGASHI_EXPORT_DIR.",
    )
    q: str = Field(default="", max_length=10_000, description="The query whose images to export.")
    images: Literal["copy", "hardlink", "symlink", "none"] = Field(
        default="copy", description="How the images go in the folder (none: captions only)."
    )
    threshold_general: float | None = Field(default=None, ge=0, le=1)
    threshold_character: float | None = Field(default=None, ge=0, le=1)
    threshold_copyright: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=1, le=100_000)
    overwrite: bool = Field(default=False, description="Replace files already in the folder.")


class JobOut(BaseModel):
    id: int
    kind: str
    state: str
    done: int
    total: int
    failed: int
    params: dict[str, Any]
    summary: dict[str, Any]
    error: str | None
    origin: str = Field(description="cli (a command's run) or queue (run by sagashi worker).")
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    heartbeat_at: str | None
    failures: list[dict[str, str]] | None = None


class ReloadResponse(BaseModel):
    generation: int | None
    images: int


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)

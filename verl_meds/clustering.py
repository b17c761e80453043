r"""Clustering of one prompt's feature vectors and the cluster size |C| of new responses.

HDBSCAN ([Campello et al. 2013](https://doi.org/10.1007/978-3-642-37456-2_14), the scikit-learn-contrib `hdbscan`
package) labels the M stored responses of one prompt; label [`NOISE`] (-1) marks a point in no cluster. A noise point
repeats nothing, so its cluster size is 0 and it gets no penalty. Everything here is deterministic (no RNG): the same
inputs always give the same labels.

Cluster size of a new response, by [`ClusterConfig`] (`method`, `assignment`):

- `hdbscan` + `joint` (default): fit the stored history and this step's new responses together; |C| is the number of
  other members (past and present) of the new response's cluster, 0 for noise.
- `hdbscan` + `knn` (the authors' order): the new response takes the majority label of its `knn_k` nearest stored
  responses under the previous fit's labels; |C| is that cluster's size in the history, 0 when the vote gives noise.
  The history is then refitted with the new responses included.
- `single`: every response of the prompt is in one cluster; |C| = stored responses + other new responses.

How HDBSCAN is computed (the fast path, [`fit_labels`]): scipy's C single linkage over the mutual-reachability
distances, then contrib's condensed-tree, stability and excess-of-mass rules re-stated in numpy
([`_hdbscan_from_linkage`]). Given the same single-linkage tree, the labels equal contrib's own
`condense_tree`/`compute_stability`/`get_clusters` (up to numbering), including float32 rounding in the
excess-of-mass comparison; tests check it. The tree itself is exact (Prim's algorithm on the dense matrix), so the
partition equals contrib's exact `HDBSCAN(algorithm="generic")` whenever no two mutual-reachability distances tie;
contrib's default (`boruvka_kdtree`, an approximate spanning tree) rarely differs from both (about 1 random set in
1,000; [`fit_labels_reference`] runs either). When distances tie (rounded features, `min_samples > 1`), the order of
equal-height merges decides the tree, and contrib's own algorithms disagree among themselves about as often as with
this path. At a few hundred rows this is 4-5x faster than contrib (see `benchmarks/bench_cluster.py`).

Absolute scale and ties ([`_scaled_hdbscan_from_linkage`], the default). HDBSCAN is scale-free: it splits a chain of
near-identical rows into pieces and noise, and joins any two rows, however far apart, when nothing else is there.
`ClusterConfig` adds two distances (on the unit sphere of L2-normalised features by default): merges above
`max_distance` are dropped, so a row farther than that from every other row is noise and each remaining tree is
clustered on its own; a selected cluster born below `merge_distance` is replaced by its nearest ancestor born at or
above it (`cluster_selection_epsilon`, [Malzer & Baum 2019](https://arxiv.org/abs/1911.02282)). With
`ties="merge"` all merges of one height are applied at once (the level sets of HDBSCAN's definition), so labels,
up to their numbering, and cluster sizes do not depend on the order of the rows. `fit_labels_reference` computes
the same labels from the definition (Kruskal's algorithm over all pairs, level by level); tests check that they
agree, also on inputs full of ties. `merge_distance=0, max_distance=None, ties="order"` (what `fork_parity` sets)
runs the contrib-equal path above. `docs/clustering.md` has the measurements behind the default distances.

Example:

```python
>>> import numpy as np
>>> from verl_meds.clustering import NOISE, fit_labels
>>> from verl_meds.config import ClusterConfig
>>> X = np.array([[0, 0], [0, 0.1], [0.1, 0], [5, 5], [5, 5.1], [5.1, 5], [20, -20]], dtype=np.float32)  # (M, F)
>>> fit_labels(X, ClusterConfig(l2_normalize=False, merge_distance=0.0, max_distance=None)).tolist()
[0, 0, 0, 1, 1, 1, -1]
>>> near = np.array([[1, 0], [1, 0.002], [1, 0.004], [1, 0.006], [-0.6, 0.8]], dtype=np.float32)
>>> fit_labels(near, ClusterConfig()).tolist()  # default scale: near-duplicates together, the far row noise
[0, 0, 0, 0, -1]

```
"""

from __future__ import annotations

import logging

import numpy as np

from .config import ClusterConfig

logger = logging.getLogger(__name__)

NOISE = -1
"""Label of a point that belongs to no cluster; its cluster size is 0 (it repeats nothing)."""


def prepare_rows(X: np.ndarray, l2_normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """
    Rows ready for distance computations, and which of them are usable.

    Args:
        X (`np.ndarray` of shape `(M, F)`, any float dtype):
            Feature vectors.
        l2_normalize (`bool`):
            Scale each finite row to unit L2 norm; rows of zeros stay zero.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: rows of shape `(M, F)`, dtype float64 (non-finite rows replaced by zeros),
        and a `(M,)` bool mask of rows whose values were all finite.

    Raises:
        ValueError: if `X` is not 2-D or has no columns.
    """
    rows = np.array(X, dtype=np.float64, copy=True)
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ValueError(f"X must have shape (M, F) with F >= 1, got shape {rows.shape}.")
    finite = np.isfinite(rows).all(axis=1)  # (M,)
    rows[~finite] = 0.0
    if l2_normalize:
        norms = np.linalg.norm(rows, axis=1, keepdims=True)  # (M, 1)
        rows = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    return rows, finite


def _edge_cases(X: np.ndarray, cfg: ClusterConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Shared start of [`fit_labels`] and [`fit_labels_reference`]: prepared rows, labels pre-filled with `NOISE`
    (non-finite rows stay noise), and the indices of the rows to cluster; `None` when the labels are already final
    (`method="single"`, or fewer than `min_cluster_size` usable rows)."""
    if cfg.method == "answer":
        raise ValueError(
            "ClusterConfig.method='answer' groups responses by answer key, not by features; use "
            "verl_meds.memory.ErrorMemory with answer_keys instead of clustering feature vectors."
        )
    rows, finite = prepare_rows(X, cfg.l2_normalize)
    labels = np.full(rows.shape[0], NOISE, dtype=np.int64)  # (M,)
    usable = np.flatnonzero(finite)
    if cfg.method == "single":
        labels[usable] = 0
        return rows, labels, None
    if usable.size < cfg.min_cluster_size:
        return rows, labels, None
    return rows, labels, usable


def fit_labels(X: np.ndarray, cfg: ClusterConfig) -> np.ndarray:
    """
    Cluster labels of the rows of `X`.

    Rows with a non-finite value are left out of the fit and labelled [`NOISE`]. If fewer than
    `cfg.min_cluster_size` finite rows remain, all rows are noise (HDBSCAN with `allow_single_cluster=True` would
    otherwise put them in one cluster). Identical rows form one cluster when `cfg.allow_single_cluster` is set;
    without it HDBSCAN labels a prompt whose rows are all identical as noise, which is kept as is. With
    `cfg.method == "single"` every finite row gets label 0 and HDBSCAN is not run. Clusters are numbered 0..K-1 in
    the order of their first row. See the module docstring for how HDBSCAN is computed and how it compares with
    [`fit_labels_reference`].

    Args:
        X (`np.ndarray` of shape `(M, F)`, any float dtype):
            Feature vectors of one prompt.
        cfg (`ClusterConfig`):
            Clustering options (`method`, `min_cluster_size`, `min_samples`, `metric`, `l2_normalize`,
            `allow_single_cluster`).

    Returns:
        `np.ndarray` of shape `(M,)`, dtype int64: labels 0..K-1, or `NOISE` (-1).

    Raises:
        ValueError: if `X` is not 2-D or has no columns, or `cfg.method` is `"answer"` (answer keys are grouped by
            [`verl_meds.memory.ErrorMemory`], not clustered here).
    """
    rows, labels, usable = _edge_cases(X, cfg)
    if usable is None:
        return labels
    tree = _mutual_reachability_linkage(rows[usable], cfg.min_samples, cfg.metric)  # (M_usable - 1, 4)
    if _scale_free_in_order(cfg):
        labels[usable] = _hdbscan_from_linkage(tree, usable.size, cfg.min_cluster_size, cfg.allow_single_cluster)
    else:
        labels[usable] = _scaled_hdbscan_from_linkage(
            tree,
            usable.size,
            cfg.min_cluster_size,
            cfg.allow_single_cluster,
            cfg.merge_distance,
            cfg.max_distance,
            merge_ties=cfg.ties == "merge",
        )
    return labels


def _scale_free_in_order(cfg: ClusterConfig) -> bool:
    """Whether `cfg` asks for plain HDBSCAN as contrib computes it: no absolute scale, ties in storage order."""
    return cfg.ties == "order" and cfg.merge_distance == 0 and cfg.max_distance is None


def fit_labels_reference(X: np.ndarray, cfg: ClusterConfig, algorithm: str = "best") -> np.ndarray:
    """
    [`fit_labels`] computed by scikit-learn-contrib `hdbscan.HDBSCAN`, the slow reference.

    Same arguments, edge cases and label numbering (first row) as [`fit_labels`]; used by tests and
    `benchmarks/bench_cluster.py`. `algorithm` is contrib's: `"best"` (its default, what the authors run) or
    `"generic"` (exact spanning tree, the same tree as [`fit_labels`]).

    Contrib has no absolute scale and takes tied merges in storage order, so it is the reference only for
    `merge_distance=0, max_distance=None, ties="order"`. Any other config (`ties` must then be `"merge"`) is
    computed by a plain re-statement of the definition instead: Kruskal's algorithm over all pairs, the
    components of each distance level formed at once, the condensed tree by recursion, excess of mass, the
    `merge_distance` climb and the labelling ([`_level_set_labels`]).

    Raises:
        ValueError: as [`fit_labels`], or for an absolute scale with `ties="order"`.
    """
    rows, labels, usable = _edge_cases(X, cfg)
    if usable is None:
        return labels
    if not _scale_free_in_order(cfg):
        if cfg.ties != "merge":
            raise ValueError("fit_labels_reference with an absolute scale supports only ties='merge'.")
        labels[usable] = _level_set_labels(rows[usable], cfg)
        return labels
    import hdbscan  # imported lazily: it pulls in pandas and joblib

    clusterer = hdbscan.HDBSCAN(
        min_cluster_size=cfg.min_cluster_size,
        min_samples=cfg.min_samples,
        metric=cfg.metric,
        allow_single_cluster=cfg.allow_single_cluster,
        algorithm=algorithm,
        core_dist_n_jobs=1,
    )
    labels[usable] = _number_by_first_row(clusterer.fit(rows[usable]).labels_.astype(np.int64))
    return labels


def _level_set_labels(rows: np.ndarray, cfg: ClusterConfig) -> np.ndarray:
    """Labels of `rows` (M >= 2, all finite) with an absolute scale, written from the definition (slow, for tests)."""
    from scipy.spatial.distance import pdist, squareform

    n = rows.shape[0]
    distances = squareform(pdist(rows, metric=_SCIPY_METRICS[cfg.metric]))  # (M, M), the fast path's values
    k = max(1, min(n - 1, cfg.min_samples))
    core = np.sort(distances, axis=1)[:, k]  # (M,) entry 0 of each sorted row is the row itself
    first, second = np.triu_indices(n, 1)  # every pair once
    weight = np.maximum(distances[first, second], np.maximum(core[first], core[second]))  # mutual reachability
    if cfg.max_distance is not None:
        near = weight <= cfg.max_distance
        first, second, weight = first[near], second[near], weight[near]
    order = np.argsort(weight, kind="stable")
    edges = list(zip(weight[order].tolist(), first[order].tolist(), second[order].tolist(), strict=True))
    owner = list(range(n))  # union-find over rows

    def find(i: int) -> int:
        while owner[i] != i:
            owner[i] = owner[owner[i]]
            i = owner[i]
        return i

    node_of = {i: ("row", i) for i in range(n)}  # component root -> its node
    heights: dict = {}
    children: dict = {}
    members: dict = {("row", i): [i] for i in range(n)}
    position = 0
    while position < len(edges):
        level = edges[position][0]
        joined: dict[int, set[int]] = {}
        while position < len(edges) and edges[position][0] == level:
            _, i, j = edges[position]
            a, b = find(i), find(j)
            if a != b:
                owner[a] = b
                group = joined.pop(a, {a}) | joined.pop(b, {b})
                for root in group:
                    joined[root] = group
            position += 1
        for group in {id(g): g for g in joined.values()}.values():
            node = ("merge", len(heights))
            heights[node] = level
            children[node] = [node_of[root] for root in group]
            members[node] = [row for root in group for row in members[node_of[root]]]
            node_of[find(next(iter(group)))] = node
    roots = {node_of[find(i)] for i in range(n)}

    def big(node) -> bool:
        return len(members[node]) >= cfg.min_cluster_size

    def lam(node) -> float:
        return np.inf if heights[node] == 0 else 1.0 / heights[node]

    clusters: list[dict] = []  # birth, birth_distance, parent, root, terms, exits

    def grow(node, cluster: int) -> None:
        kids = children.get(node, [])
        large = [kid for kid in kids if big(kid)]
        for kid in kids:
            if not big(kid):
                for row in members[kid]:
                    clusters[cluster]["exits"].append((row, lam(node)))
                    clusters[cluster]["terms"].append(lam(node) - clusters[cluster]["birth"])
        if len(large) == 1:
            grow(large[0], cluster)
        elif len(large) >= 2:
            for kid in large:
                clusters.append(
                    {
                        "birth": lam(node),
                        "birth_distance": heights[node],
                        "parent": cluster,
                        "root": False,
                        "terms": [],
                        "exits": [],
                    }
                )
                clusters[cluster]["terms"].append((lam(node) - clusters[cluster]["birth"]) * len(members[kid]))
                grow(kid, len(clusters) - 1)

    for root in sorted(roots, key=lambda node: min(members[node])):
        if big(root):
            birth = 0.0 if cfg.max_distance is None else 1.0 / cfg.max_distance
            far = np.inf if cfg.max_distance is None else cfg.max_distance
            clusters.append(
                {"birth": birth, "birth_distance": far, "parent": -1, "root": True, "terms": [], "exits": []}
            )
            grow(root, len(clusters) - 1)
    labels = np.full(n, NOISE, dtype=np.int64)
    if not clusters:
        return labels
    stability = []
    for cluster in clusters:
        total = 0.0
        for term in sorted(cluster["terms"]):
            total += term
        stability.append(total)
    kids_of: dict[int, list[int]] = {c: [] for c in range(len(clusters))}
    for c, cluster in enumerate(clusters):
        if cluster["parent"] >= 0:
            kids_of[cluster["parent"]].append(c)
    kept = {}

    def excess_of_mass(c: int) -> float:
        subtree = 0.0
        for value in sorted(excess_of_mass(kid) for kid in kids_of[c]):
            subtree += value
        if clusters[c]["root"] and not cfg.allow_single_cluster:
            kept[c] = False
            return subtree
        kept[c] = subtree <= stability[c]
        return stability[c] if kept[c] else subtree

    selected: set[int] = set()

    def select(c: int) -> None:
        if kept[c]:
            selected.add(c)
        else:
            for kid in kids_of[c]:
                select(kid)

    for c, cluster in enumerate(clusters):
        if cluster["root"]:
            excess_of_mass(c)
            select(c)
    if cfg.merge_distance > 0:
        lifted = set()
        for c in selected:
            while clusters[c]["birth_distance"] < cfg.merge_distance and clusters[c]["parent"] >= 0:
                above = clusters[c]["parent"]
                if clusters[above]["root"] and not cfg.allow_single_cluster:
                    break
                c = above
            lifted.add(c)
        selected = set()
        for c in lifted:
            above = clusters[c]["parent"]
            while above >= 0 and above not in lifted:
                above = clusters[above]["parent"]
            if above < 0:
                selected.add(c)

    def holder(c: int) -> int:
        while c >= 0 and c not in selected:
            c = clusters[c]["parent"]
        return NOISE if c < 0 else c

    exit_lambda = {}
    for c, cluster in enumerate(clusters):
        for row, value in cluster["exits"]:
            labels[row], exit_lambda[row] = holder(c), value
    roots_selected = [c for c in selected if clusters[c]["root"]]
    if cfg.max_distance is None and roots_selected:  # contrib keeps only a lone selected root's densest rows
        root = roots_selected[0]
        edge_lambdas = [value for _, value in clusters[root]["exits"]]
        edge_lambdas += [clusters[kid]["birth"] for kid in kids_of[root]]
        floor = 1.0 / cfg.merge_distance if cfg.merge_distance > 0 else max(edge_lambdas, default=0.0)
        for row, value in exit_lambda.items():
            if labels[row] == root and value < floor:
                labels[row] = NOISE
    return _number_by_first_row(labels)


_SCIPY_METRICS = {"euclidean": "euclidean", "manhattan": "cityblock", "chebyshev": "chebyshev"}


def _mutual_reachability_linkage(rows: np.ndarray, min_samples: int, metric: str) -> np.ndarray:
    """
    Single-linkage tree of the mutual-reachability distances of `rows` (M >= 2), in scipy's `linkage` format.

    The core distance of a row is the distance to its `min_samples`-th nearest other row (contrib's convention,
    clamped to M - 1); the mutual reachability of two rows is the largest of their distance and both core distances.
    Returns a float64 array of shape `(M - 1, 4)`: merged nodes, merge height, size of the merged node.
    """
    from scipy.spatial.distance import pdist, squareform

    num_rows = rows.shape[0]
    distances = squareform(pdist(rows, metric=_SCIPY_METRICS[metric]))  # (M, M)
    k = max(1, min(num_rows - 1, min_samples))
    if k == 1:
        np.fill_diagonal(distances, np.inf)
        core = distances.min(axis=1)  # (M,) distance to the nearest other row
        np.fill_diagonal(distances, 0.0)
    else:
        core = np.partition(distances, k, axis=1)[:, k]  # (M,) the row itself (distance 0) is entry 0
    np.maximum(distances, core[:, None], out=distances)
    np.maximum(distances, core[None, :], out=distances)  # (M, M) mutual reachability
    condensed = squareform(distances, checks=False)  # (M * (M - 1) / 2,)
    try:  # what scipy.cluster.hierarchy.linkage(method="single") runs, without its input validation
        from scipy.cluster._hierarchy import mst_single_linkage
    except ImportError:  # pragma: no cover - private scipy module moved
        from scipy.cluster.hierarchy import linkage

        return linkage(condensed, method="single")
    return mst_single_linkage(condensed, num_rows)


def _jump_to_roots(pointer: np.ndarray) -> np.ndarray:
    """Follow `pointer` (a forest where roots point to themselves) until every entry holds its root."""
    while True:
        jumped = pointer[pointer]
        if np.array_equal(jumped, pointer):
            return pointer
        pointer = jumped


def _hdbscan_from_linkage(
    tree: np.ndarray, num_rows: int, min_cluster_size: int, allow_single_cluster: bool
) -> np.ndarray:
    """
    HDBSCAN labels from a single-linkage tree: contrib's condensed tree, stabilities and excess of mass, in numpy.

    Dendrogram nodes: rows 0..M-1, merge `i` is node M + i, the root is 2M - 2; lambda = 1 / height (inf at height
    0). A node is *big* when it has at least `min_cluster_size` rows. A condensed cluster starts at the root and at
    every big node whose sibling is big too; other big nodes continue their parent's cluster. A row leaves the
    cluster of its nearest big ancestor, at that ancestor's lambda. The stability of a cluster sums
    `(lambda - birth) * size` over the rows and child clusters that leave it, in contrib's order (top-down, left
    first), and excess of mass compares it with its children's sum accumulated in float32, as contrib does.

    Args:
        tree (`np.ndarray` of shape `(M - 1, 4)`): single-linkage tree ([`_mutual_reachability_linkage`]).
        num_rows (`int`): M >= `min_cluster_size`.
        min_cluster_size (`int`): HDBSCAN `min_cluster_size`.
        allow_single_cluster (`bool`): the root may be selected.

    Returns:
        `np.ndarray` of shape `(M,)`, int64 labels numbered by first row, `NOISE` for noise.
    """
    n = num_rows
    left, right = tree[:, 0].astype(np.intp), tree[:, 1].astype(np.intp)  # (M - 1,)
    num_nodes = 2 * n - 1
    root = num_nodes - 1
    nodes = np.arange(num_nodes)
    parent = np.empty(num_nodes, dtype=np.intp)  # (2M - 1,)
    parent[left] = parent[right] = nodes[n:]
    parent[root] = root
    sibling = np.empty(num_nodes, dtype=np.intp)
    sibling[left], sibling[right], sibling[root] = right, left, root
    is_right = np.zeros(num_nodes, dtype=bool)
    is_right[right] = True
    lam = np.zeros(num_nodes)  # (2M - 1,) lambda of each merge; unused for rows
    with np.errstate(divide="ignore"):
        lam[n:] = np.where(tree[:, 2] > 0.0, 1.0 / tree[:, 2], np.inf)
    size = np.ones(num_nodes, dtype=np.intp)
    size[n:] = tree[:, 3].astype(np.intp)
    big = size >= min_cluster_size
    starts = big & big[sibling]
    starts[root] = True
    cluster_node = _jump_to_roots(np.where(starts, nodes, parent))  # (2M - 1,) start node of each node's cluster
    exit_node = _jump_to_roots(np.where(big, nodes, parent))[:n]  # (M,) nearest big ancestor of each row

    starts_at = np.flatnonzero(starts)  # (K,) children before parents, root last
    num_clusters = starts_at.size
    cluster_of = np.full(num_nodes, -1, dtype=np.intp)
    cluster_of[starts_at] = np.arange(num_clusters)
    children = starts_at[:-1]  # (K - 1,) non-root clusters
    parent_cluster = cluster_of[cluster_node[parent[children]]]  # (K - 1,)
    birth = np.zeros(num_clusters)  # (K,) the root is born at lambda 0
    birth[:-1] = lam[parent[children]]
    row_cluster = cluster_of[cluster_node[:n]]  # (M,)
    row_lambda = lam[exit_node]  # (M,)

    # Condensed-tree edges: every row, then every non-root cluster, leaving its parent cluster.
    edge_cluster = np.concatenate([row_cluster, parent_cluster])
    edge_lambda = np.concatenate([row_lambda, lam[parent[children]]])
    edge_size = np.concatenate([np.ones(n), size[children].astype(np.float64)])
    edge_node = np.concatenate([exit_node, parent[children]])
    edge_right = np.concatenate([np.zeros(n, dtype=bool), is_right[children]])
    order = np.lexsort((edge_right, -edge_node, edge_cluster))  # contrib's emission order within each cluster
    terms = (edge_lambda - birth[edge_cluster]) * edge_size
    stability = np.bincount(edge_cluster[order], weights=terms[order], minlength=num_clusters)  # (K,)
    root_max_lambda = float(edge_lambda[edge_cluster == num_clusters - 1].max(initial=0.0))

    selected_of = _excess_of_mass(stability, parent_cluster, is_right[children], allow_single_cluster)  # (K,)
    row_selected = selected_of[row_cluster]  # (M,)
    keep = row_selected != NOISE
    if selected_of[-1] == num_clusters - 1:  # only the root is selected: contrib keeps its densest rows
        keep &= row_lambda >= root_max_lambda
    return _number_by_first_row(np.where(keep, row_selected, NOISE))


def _excess_of_mass(
    stability: np.ndarray, parent_cluster: np.ndarray, is_right: np.ndarray, allow_single_cluster: bool
) -> np.ndarray:
    """
    For each condensed cluster (children before parents, root last), the selected cluster that holds it, or `NOISE`.

    A cluster is kept when the float32 sum of its children's stabilities does not exceed its own (it then replaces
    that sum for its parent); a kept cluster with no kept ancestor is selected. The root takes part only when
    `allow_single_cluster` is set.
    """
    num_clusters = stability.shape[0]
    root = num_clusters - 1
    stability = stability.tolist()
    parents = parent_cluster.tolist()
    kids: list[list[int]] = [[] for _ in range(num_clusters)]
    for child in np.lexsort((is_right, parent_cluster)).tolist():  # left child first
        kids[parents[child]].append(child)
    kept = [False] * num_clusters
    for cluster in range(num_clusters):
        if cluster == root and not allow_single_cluster:
            continue
        subtree = np.float32(0.0)
        for child in kids[cluster]:
            subtree = np.float32(float(subtree) + stability[child])
        if float(subtree) > stability[cluster]:
            stability[cluster] = float(subtree)
        else:
            kept[cluster] = True
    holder = [NOISE] * num_clusters
    blocked = [False] * num_clusters
    holder[root] = root if kept[root] else NOISE
    for cluster in range(root - 1, -1, -1):
        above = parents[cluster]
        blocked[cluster] = blocked[above] or kept[above]
        holder[cluster] = cluster if kept[cluster] and not blocked[cluster] else holder[above]
    return np.array(holder, dtype=np.intp)


def _scaled_hdbscan_from_linkage(
    tree: np.ndarray,
    num_rows: int,
    min_cluster_size: int,
    allow_single_cluster: bool,
    merge_distance: float,
    max_distance: float | None,
    merge_ties: bool,
) -> np.ndarray:
    """
    HDBSCAN labels with an absolute scale, from a single-linkage tree (see the module docstring, "Absolute scale").

    1. Merges above `max_distance` are dropped: the tree becomes a forest, each tree is clustered on its own, its
       root is born at lambda `1 / max_distance` and may be selected (when `allow_single_cluster`) like any cluster,
       with all its rows. Trees with fewer than `min_cluster_size` rows are noise.
    2. With `merge_ties`, a merge at the same height as its parent merge is folded into it, so a node has all the
       components that join at its height as children (the level sets of HDBSCAN's definition; any minimum
       spanning tree and any merge order give the same nodes).
    3. Condensed tree: a node splits its cluster when two or more of its children have `min_cluster_size` rows;
       each such child starts a cluster born at the node's lambda, the other children's rows leave at that lambda.
       Stability and excess of mass are HDBSCAN's (children's stabilities summed in ascending order, so the result
       does not depend on node numbering).
    4. A selected cluster born below `merge_distance` is replaced by its nearest ancestor born at or above it (a
       tree's root counts as born at `max_distance`; with `allow_single_cluster=False` the climb stops below it).
    5. A row is labelled with the selected cluster it leaves or that holds the cluster it leaves, else `NOISE`.
       Without `max_distance`, a selected root keeps only its densest rows, as contrib does: rows leaving it at
       lambda >= `1 / merge_distance`, or at its largest lambda when `merge_distance` is 0.

    Args:
        tree (`np.ndarray` of shape `(M - 1, 4)`): single-linkage tree ([`_mutual_reachability_linkage`]).
        num_rows (`int`): M >= 2.
        min_cluster_size (`int`): HDBSCAN `min_cluster_size`.
        allow_single_cluster (`bool`): a tree's root may be selected.
        merge_distance (`float`): `ClusterConfig.merge_distance` (0: off).
        max_distance (`float` or `None`): `ClusterConfig.max_distance` (`None`: off).
        merge_ties (`bool`): fold equal-height merges together (`ClusterConfig.ties == "merge"`).

    Returns:
        `np.ndarray` of shape `(M,)`, int64 labels numbered by first row, `NOISE` for noise.
    """
    n = num_rows
    num_nodes = 2 * n - 1
    nodes = np.arange(num_nodes)
    left, right = tree[:, 0].astype(np.intp), tree[:, 1].astype(np.intp)  # (M - 1,)
    height = np.zeros(num_nodes)  # (2M - 1,) merge height; 0 for rows
    height[n:] = tree[:, 2]
    kept = np.ones(num_nodes, dtype=bool)  # rows and merges at or below max_distance
    if max_distance is not None:
        kept[n:] = tree[:, 2] <= max_distance
    live = kept[n:]
    parent = nodes.copy()  # tree roots point to themselves
    parent[left[live]] = nodes[n:][live]
    parent[right[live]] = nodes[n:][live]
    is_root = (parent == nodes) & kept
    folded = np.zeros(num_nodes, dtype=bool)
    if merge_ties:
        folded[n:] = kept[n:] & ~is_root[n:] & (height[parent[n:]] == height[n:])
    top = _jump_to_roots(np.where(folded, parent, nodes))  # (2M - 1,) the node each folded merge joins
    node_parent = top[parent]  # (2M - 1,) parent in the folded tree (roots: themselves)
    size = np.ones(num_nodes, dtype=np.intp)
    size[n:] = tree[:, 3].astype(np.intp)
    big = kept & ~folded & (size >= min_cluster_size)
    big_children = np.bincount(node_parent[big & ~is_root], minlength=num_nodes)  # (2M - 1,)
    starts = big & (is_root | (big_children[node_parent] >= 2))
    starts_at = np.flatnonzero(starts)  # (K,) children before parents
    labels = np.full(n, NOISE, dtype=np.int64)
    if starts_at.size == 0:
        return labels
    num_clusters = starts_at.size
    cluster_node = _jump_to_roots(np.where(starts, nodes, node_parent))  # (2M - 1,) start node of each cluster
    exit_node = _jump_to_roots(np.where(big, nodes, node_parent))[:n]  # (M,) nearest big ancestor of each row
    has_exit = big[exit_node]  # (M,) False: the row's tree is smaller than min_cluster_size
    lam = np.zeros(num_nodes)
    with np.errstate(divide="ignore"):
        lam[n:] = np.where(height[n:] > 0.0, 1.0 / height[n:], np.inf)

    cluster_of = np.full(num_nodes, -1, dtype=np.intp)
    cluster_of[starts_at] = np.arange(num_clusters)
    root_cluster = is_root[starts_at]  # (K,)
    parent_cluster = np.where(root_cluster, -1, cluster_of[cluster_node[node_parent[starts_at]]])  # (K,)
    root_birth = 0.0 if max_distance is None else 1.0 / max_distance
    birth = np.where(root_cluster, root_birth, lam[node_parent[starts_at]])  # (K,)
    birth_distance = np.where(
        root_cluster, np.inf if max_distance is None else max_distance, height[node_parent[starts_at]]
    )  # (K,)

    rows = np.flatnonzero(has_exit)
    row_cluster = cluster_of[cluster_node[exit_node[rows]]]  # (R,)
    row_lambda = lam[exit_node[rows]]  # (R,)
    children = np.flatnonzero(~root_cluster)
    edge_cluster = np.concatenate([row_cluster, parent_cluster[children]])
    edge_lambda = np.concatenate([row_lambda, birth[children]])
    edge_size = np.concatenate([np.ones(rows.size), size[starts_at[children]].astype(np.float64)])
    terms = (edge_lambda - birth[edge_cluster]) * edge_size
    order = np.lexsort((terms, edge_cluster))  # ascending terms within each cluster: independent of numbering
    stability = np.bincount(edge_cluster[order], weights=terms[order], minlength=num_clusters).tolist()  # (K,)

    parents = parent_cluster.tolist()
    kids: list[list[int]] = [[] for _ in range(num_clusters)]
    for child in children.tolist():
        kids[parents[child]].append(child)
    roots = root_cluster.tolist()
    kept_cluster = [False] * num_clusters
    for cluster in range(num_clusters):  # excess of mass, children first
        if roots[cluster] and not allow_single_cluster:
            continue
        subtree = 0.0
        for value in sorted(stability[child] for child in kids[cluster]):
            subtree += value
        if subtree > stability[cluster]:
            stability[cluster] = subtree
        else:
            kept_cluster[cluster] = True
    selected = [False] * num_clusters
    blocked = [False] * num_clusters
    for cluster in range(num_clusters - 1, -1, -1):  # parents first
        above = parents[cluster]
        blocked[cluster] = above >= 0 and (blocked[above] or kept_cluster[above])
        selected[cluster] = kept_cluster[cluster] and not blocked[cluster]
    if merge_distance > 0:
        born_at = birth_distance.tolist()
        targets = set()
        for cluster in np.flatnonzero(selected).tolist():
            while born_at[cluster] < merge_distance and parents[cluster] >= 0:
                above = parents[cluster]
                if roots[above] and not allow_single_cluster:
                    break
                cluster = above
            targets.add(cluster)
        selected = [False] * num_clusters
        for cluster in targets:
            above, covered = parents[cluster], False
            while above >= 0 and not covered:
                covered, above = above in targets, parents[above]
            selected[cluster] = not covered
    holder = [NOISE] * num_clusters
    for cluster in range(num_clusters - 1, -1, -1):
        above = parents[cluster]
        holder[cluster] = cluster if selected[cluster] else (holder[above] if above >= 0 else NOISE)
    row_label = np.asarray(holder, dtype=np.int64)[row_cluster]  # (R,)
    if max_distance is None and any(selected[c] for c in np.flatnonzero(root_cluster).tolist()):
        root = int(np.flatnonzero(root_cluster)[0])  # without a cut there is one tree
        if merge_distance > 0:
            dense = row_lambda >= 1.0 / merge_distance
        else:
            dense = row_lambda >= float(edge_lambda[edge_cluster == root].max(initial=0.0))
        row_label = np.where(dense | (row_label != root), row_label, NOISE)
    labels[rows] = row_label
    return _number_by_first_row(labels)


def _number_by_first_row(raw: np.ndarray) -> np.ndarray:
    """Relabel cluster ids (ints >= 0) 0..K-1 in the order of each cluster's first row; `NOISE` stays."""
    labels = np.full(raw.shape[0], NOISE, dtype=np.int64)  # (M,)
    clustered = np.flatnonzero(raw != NOISE)
    if clustered.size == 0:
        return labels
    ids = raw[clustered]
    first = np.full(int(ids.max()) + 1, raw.shape[0], dtype=np.int64)  # first row of each id, M if unused
    np.minimum.at(first, ids, clustered)
    used = np.flatnonzero(first < raw.shape[0])
    rank = np.empty(first.shape[0], dtype=np.int64)
    rank[used[np.argsort(first[used], kind="stable")]] = np.arange(used.size)
    labels[clustered] = rank[ids]
    return labels


def _cluster_counts(labels: np.ndarray) -> np.ndarray | None:
    """Members per label 0..max for labels in `NOISE`..2M (the labels of a fit); `None` for other labels."""
    if labels.size == 0 or labels.min() < NOISE or labels.max() > 2 * labels.size:
        return None
    return np.bincount(labels[labels != NOISE])  # (max + 1,), zero for unused ids


def member_counts(labels: np.ndarray) -> np.ndarray:
    """
    Size of each point's cluster (the point included); 0 for noise.

    Args:
        labels (`np.ndarray` of shape `(M,)`, int):
            Cluster labels, `NOISE` for noise.

    Returns:
        `np.ndarray` of shape `(M,)`, dtype int64.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    counts = np.zeros(labels.shape[0], dtype=np.int64)  # (M,)
    clustered = labels != NOISE
    per_label = _cluster_counts(labels)
    if per_label is not None:
        counts[clustered] = per_label[labels[clustered]]
    elif clustered.any():
        _, inverse, sizes = np.unique(labels[clustered], return_inverse=True, return_counts=True)
        counts[clustered] = sizes[inverse]
    return counts


def num_clusters(labels: np.ndarray) -> int:
    """Number K of distinct non-noise labels."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    per_label = _cluster_counts(labels)
    if per_label is not None:
        return int(np.count_nonzero(per_label))
    return int(np.unique(labels[labels != NOISE]).size)


def largest_cluster_size(labels: np.ndarray) -> int:
    """Number of members of the largest non-noise cluster; 0 when every point is noise."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    per_label = _cluster_counts(labels)
    if per_label is not None:
        return int(per_label.max(initial=0))
    counts = member_counts(labels)
    return int(counts.max()) if counts.size else 0


def pairwise_distances(A: np.ndarray, B: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """
    Distances between every row of `A` and every row of `B`.

    Args:
        A (`np.ndarray` of shape `(n, F)`):
            First set of rows.
        B (`np.ndarray` of shape `(m, F)`):
            Second set of rows.
        metric (`str`, *optional*, defaults to `"euclidean"`):
            `"euclidean"`, `"manhattan"` or `"chebyshev"`.

    Returns:
        `np.ndarray` of shape `(n, m)`, dtype float64.

    Raises:
        ValueError: on an unknown metric or mismatched F.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"A and B must have shapes (n, F) and (m, F), got {A.shape} and {B.shape}.")
    delta = np.abs(A[:, None, :] - B[None, :, :])  # (n, m, F)
    if metric == "euclidean":
        return np.sqrt(np.sum(delta * delta, axis=-1))
    if metric == "manhattan":
        return np.sum(delta, axis=-1)
    if metric == "chebyshev":
        return np.max(delta, axis=-1, initial=0.0)
    raise ValueError(f"metric must be one of ['euclidean', 'manhattan', 'chebyshev'], got {metric!r}.")


def knn_assign(
    X_new: np.ndarray,
    X_old: np.ndarray,
    labels_old: np.ndarray,
    k: int,
    metric: str = "euclidean",
    ties_to_noise: bool = False,
    max_distance: float | None = None,
    merge_ties: bool = False,
) -> np.ndarray:
    """
    Label of each new row by majority vote among its `k` nearest old rows.

    Only old rows within `max_distance` of the new row vote (all of them when it is `None`); a new row with no
    voter gets `NOISE`. A tie between labels goes to the non-noise label whose member is nearest among the
    neighbours; a tie never goes to [`NOISE`] when a non-noise label is part of it. A vote won by noise alone gives
    `NOISE` (cluster size 0). Rows are used as given, so apply the preprocessing of the fit first
    ([`prepare_rows`]). Non-finite new rows get `NOISE`; non-finite old rows never vote. With fewer than `k`
    usable old rows, all of them vote.

    Equal distances: by default (`merge_ties=False`, the authors' rule) neighbours at equal distance are ordered by
    old row index, so the order of the stored rows can decide the vote. With `merge_ties=True` the result depends
    only on the rows, not their order: every old row at the distance of the `k`-th neighbour votes too, and labels
    still tied after the nearest-member rule go to the larger cluster (members among all old rows), then to the
    cluster holding the lexicographically smallest old row.

    Args:
        X_new (`np.ndarray` of shape `(n, F)`):
            Rows to assign.
        X_old (`np.ndarray` of shape `(m, F)`):
            Rows with known labels.
        labels_old (`np.ndarray` of shape `(m,)`, int):
            Labels of `X_old`, `NOISE` for noise.
        k (`int`):
            Number of voting neighbours, >= 1.
        metric (`str`, *optional*, defaults to `"euclidean"`):
            `"euclidean"`, `"manhattan"` or `"chebyshev"`.
        ties_to_noise (`bool`, *optional*, defaults to `False`):
            The authors' fault, for `ClusterConfig.fork_faults`: any tied vote gives `NOISE`.
        max_distance (`float` or `None`, *optional*, defaults to `None`):
            `ClusterConfig.max_distance`: farther old rows do not vote.
        merge_ties (`bool`, *optional*, defaults to `False`):
            Order-free tie rules (`ClusterConfig.ties == "merge"`), see above.

    Returns:
        `np.ndarray` of shape `(n,)`, dtype int64: the assigned labels.

    Raises:
        ValueError: if `k < 1` or the shapes do not match.
    """
    if k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}.")
    X_new = np.asarray(X_new, dtype=np.float64)
    X_old = np.asarray(X_old, dtype=np.float64)
    labels_old = np.asarray(labels_old, dtype=np.int64).reshape(-1)
    if X_old.ndim != 2 or labels_old.shape[0] != X_old.shape[0]:
        raise ValueError(f"labels_old must have shape ({X_old.shape[0]},), got {labels_old.shape}.")
    assigned = np.full(X_new.shape[0], NOISE, dtype=np.int64)  # (n,)
    old_ok = np.isfinite(X_old).all(axis=1)  # (m,)
    new_ok = np.isfinite(X_new).all(axis=1)  # (n,)
    if not old_ok.any() or not new_ok.any():
        return assigned
    voters = labels_old[old_ok]
    distances = pairwise_distances(X_new[new_ok], X_old[old_ok], metric)  # (n_ok, m_ok)
    k_eff = min(k, voters.shape[0])
    votes = []
    for row in distances:
        order = np.argsort(row, kind="stable")  # nearest first
        if merge_ties:
            order = order[row[order] <= row[order[k_eff - 1]]]  # every row at the k-th distance votes
        else:
            order = order[:k_eff]
        if max_distance is not None:
            order = order[row[order] <= max_distance]
        if order.size == 0:
            votes.append(NOISE)
            continue
        neighbour_labels = voters[order]
        values, counts = np.unique(neighbour_labels, return_counts=True)
        tied = values[counts == counts.max()]
        if ties_to_noise and tied.size > 1:
            votes.append(NOISE)
            continue
        candidates = tied[tied != NOISE]
        if candidates.size == 0:
            votes.append(NOISE)
            continue
        if merge_ties and candidates.size > 1:
            votes.append(_break_tie(candidates, row[order], neighbour_labels, X_old[old_ok], voters))
            continue
        # The nearest neighbour carrying a candidate label decides the tie.
        votes.append(int(next(label for label in neighbour_labels if label in candidates)))
    assigned[new_ok] = votes
    return assigned


def _break_tie(
    candidates: np.ndarray, distances: np.ndarray, labels: np.ndarray, old_rows: np.ndarray, old_labels: np.ndarray
) -> int:
    """The label among tied `candidates` with the nearest voting member, then the most members among all old rows,
    then the lexicographically smallest member row: a choice that does not depend on the order of the rows."""

    def key(label: int) -> tuple:
        members = old_rows[old_labels == label]  # (c, F)
        smallest = members[np.lexsort(members.T[::-1])[0]]  # lexicographic minimum, first column first
        return (float(distances[labels == label].min()), -members.shape[0], tuple(smallest.tolist()))

    return int(min(candidates.tolist(), key=key))


def cluster_sizes_for_new(
    X_old: np.ndarray, X_new: np.ndarray, cfg: ClusterConfig, labels_old: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """
    Cluster size |C| of each new row against one prompt's history, and the labels of history + new rows.

    See the module docstring for the three modes. In `knn` mode `labels_old` should be the labels returned by the
    previous call; when it is missing or does not match `X_old` the history is fitted first.

    Args:
        X_old (`np.ndarray` of shape `(m, F)`):
            Stored feature vectors of the prompt (m may be 0).
        X_new (`np.ndarray` of shape `(n, F)`):
            This step's feature vectors of the prompt, same outcome.
        cfg (`ClusterConfig`):
            Clustering options.
        labels_old (`np.ndarray` of shape `(m,)`, int, *optional*):
            Labels of `X_old` from the previous fit (used by `assignment="knn"` only).

    Returns:
        `tuple[np.ndarray, np.ndarray]`: cluster sizes of shape `(n,)`, dtype int64 (0 for noise and non-finite
        rows), and labels of shape `(m + n,)`, dtype int64, of the fit of the history followed by the new rows.

    Raises:
        ValueError: if F differs between `X_old` and `X_new`.
    """
    X_old = np.asarray(X_old)
    X_new = np.asarray(X_new)
    if X_old.ndim != 2 or X_new.ndim != 2 or X_old.shape[1] != X_new.shape[1]:
        raise ValueError(f"X_old and X_new must have shapes (m, F) and (n, F), got {X_old.shape} and {X_new.shape}.")
    num_old = X_old.shape[0]
    labels_all = fit_labels(np.concatenate([X_old, X_new], axis=0), cfg)  # (m + n,)
    if cfg.method == "single" or cfg.assignment == "joint":
        others = member_counts(labels_all)[num_old:] - 1  # (n,)
        return np.maximum(others, 0), labels_all
    if labels_old is None or np.asarray(labels_old).shape != (num_old,):
        labels_old = fit_labels(X_old, cfg)
    labels_old = np.asarray(labels_old, dtype=np.int64)
    rows_old, old_ok = prepare_rows(X_old, cfg.l2_normalize)
    rows_new, new_ok = prepare_rows(X_new, cfg.l2_normalize)
    rows_old[~old_ok] = np.nan  # non-finite rows stay out of the vote
    rows_new[~new_ok] = np.nan
    assigned = knn_assign(
        rows_new,
        rows_old,
        labels_old,
        cfg.knn_k,
        cfg.metric,
        ties_to_noise=cfg.fork_faults,
        max_distance=cfg.max_distance,
        merge_ties=cfg.ties == "merge",
    )  # (n,)
    history_counts = member_counts(labels_old)  # (m,) size of each stored point's cluster, 0 for noise
    history_sizes = {int(label): int(count) for label, count in zip(labels_old, history_counts, strict=True)}
    if cfg.fork_faults:  # the authors' fault: a noise vote is charged the number of stored noise points
        history_sizes[NOISE] = int((labels_old == NOISE).sum())
    sizes = np.array([history_sizes.get(int(label), 0) for label in assigned], dtype=np.int64)  # noise -> 0
    return sizes, labels_all

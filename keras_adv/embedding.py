"""Finding the embedding matrix that adversarial training perturbs.

Works on Keras 3 and tf-keras models alike: layers are searched through
nested models and layers (a KerasHub classifier keeps `token_embedding` inside
its backbone, where `model.get_layer` does not look), and variables are
matched by their path (Keras 3) or name (tf-keras, with or without `:0`).
"""

__all__ = ["find_embedding", "embedding_candidates"]


def _all_layers(model):
    # `_flatten_layers` is the one traversal that reaches layers tracked inside
    # other layers as well as nested models, on Keras 3 and tf-keras alike.
    return list(model._flatten_layers(include_self=False, recursive=True))


def _variable_names(variable):
    """The names a user may give for `variable`: its path, its name, without `:0`."""
    names = {getattr(variable, "path", None), variable.name}
    names |= {n[: -len(":0")] for n in names if n and n.endswith(":0")}
    names.discard(None)
    return names


def _display_name(variable):
    return getattr(variable, "path", None) or variable.name


def _embedding_matrix(layer):
    matrix = getattr(layer, "embeddings", None)
    if matrix is None or len(matrix.shape) != 2:
        return None
    return matrix


def embedding_candidates(model):
    """Lists the embedding layers of `model` as `"layer_name (Class, V x d)"`."""
    candidates = []
    seen = set()
    for layer in _all_layers(model):
        matrix = _embedding_matrix(layer)
        if matrix is not None and id(matrix) not in seen:
            seen.add(id(matrix))
            vocab, dim = matrix.shape
            candidates.append(
                f"'{layer.name}' ({type(layer).__name__}, {vocab} x {dim}, "
                f"variable '{_display_name(matrix)}')"
            )
    return candidates


def _describe_candidates(model):
    candidates = embedding_candidates(model)
    if not candidates:
        return "The model has no embedding layer (no layer with a 2-D `embeddings` matrix)."
    return "Embedding layers in this model: " + "; ".join(candidates) + "."


def find_embedding(model, name):
    """Returns the embedding matrix variable named by `name`.

    Args:
        model: A Keras 3 or tf-keras model.
        name: The name of an embedding layer, searched through nested models
            and layers, or the path/name of an embedding variable
            (e.g. `"token_embedding/embeddings"` or
            `"Embedding-Token/embeddings:0"`).

    Returns:
        The 2-D embedding variable (vocabulary x dimension).

    Raises:
        TypeError: If `name` is not a string, or names a layer that has no
            embedding matrix, or a variable that is not 2-D.
        ValueError: If nothing matches `name`, or several different
            embeddings do. The message lists the embedding layers that exist.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"`embedding_name` must be a non-empty string naming an embedding "
            f"layer or variable, got {name!r}. {_describe_candidates(model)}"
        )
    layers = [layer for layer in _all_layers(model) if layer.name == name]
    if layers:
        matrices = {}
        for layer in layers:
            matrix = _embedding_matrix(layer)
            if matrix is None:
                raise TypeError(
                    f"Layer '{name}' ({type(layer).__name__}) has no embedding "
                    f"matrix (a 2-D `embeddings` variable) to perturb. "
                    f"{_describe_candidates(model)}"
                )
            matrices[id(matrix)] = matrix
        if len(matrices) > 1:
            raise ValueError(
                f"Embedding name '{name}' is ambiguous: it matches "
                f"{len(matrices)} layers with different matrices: "
                + ", ".join(f"'{_display_name(m)}'" for m in matrices.values())
                + ". Pass the variable path of the one to perturb instead."
            )
        return next(iter(matrices.values()))

    variables = {id(v): v for v in model.weights if name in _variable_names(v)}
    if len(variables) > 1:
        raise ValueError(
            f"Embedding name '{name}' is ambiguous: it matches the variables "
            + ", ".join(f"'{_display_name(v)}'" for v in variables.values())
            + ". Pass the full path of the one to perturb."
        )
    if variables:
        variable = next(iter(variables.values()))
        if len(variable.shape) != 2:
            raise TypeError(
                f"Variable '{_display_name(variable)}' has shape "
                f"{tuple(variable.shape)}; an embedding matrix is 2-D "
                f"(vocabulary x dimension). {_describe_candidates(model)}"
            )
        return variable
    raise ValueError(
        f"No layer or variable named '{name}' in model '{model.name}'. "
        f"{_describe_candidates(model)}"
    )

"""Finding the embedding matrix that adversarial training perturbs.

Works on Keras 3 and tf-keras models alike: layers are searched through
nested models and layers (a KerasHub classifier keeps `token_embedding` inside
its backbone, where `model.get_layer` does not look), and variables are
matched by their path (Keras 3) or name (tf-keras, with or without `:0`).
"""

__all__ = ["find_embedding", "find_embedding_layer", "embedding_candidates"]


def _walk_layers(layer, prefix=""):
    """Yields `(qualified_name, layer)` for every layer below `layer`.

    The qualified name joins the names of the enclosing layers ("right/emb"),
    so that two nested models with an "emb" layer each can be told apart.
    """
    # `_flatten_layers` is the one traversal that reaches layers tracked inside
    # other layers as well as nested models, on Keras 3 and tf-keras alike.
    for child in layer._flatten_layers(include_self=False, recursive=False):
        qualified = f"{prefix}/{child.name}" if prefix else child.name
        yield qualified, child
        yield from _walk_layers(child, qualified)


def _short_name(variable):
    return variable.name.split("/")[-1].split(":")[0]


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
    if getattr(layer, "lora_enabled", False):
        # Keras's LoRA makes `embeddings` a tensor computed from the frozen
        # matrix `_embeddings` and the factors: the matrix variable is
        # `_embeddings` (named "embeddings"), what names and lists it. (The
        # Keras 3 stacks then refuse the layer, `keras3.check_embedding`.)
        matrix = getattr(layer, "_embeddings", matrix)
    if matrix is None or len(getattr(matrix, "shape", ())) != 2:
        return None
    return matrix


def _is_unbuilt_embedding(layer):
    # Keras's Embedding (and its subclasses: KerasHub's ReversibleEmbedding,
    # bert4keras's) makes its matrix in `build`; before, its sizes say what it is.
    return (
        not layer.built
        and isinstance(getattr(layer, "input_dim", None), int)
        and isinstance(getattr(layer, "output_dim", None), int)
    )


def _embedding_layers(model):
    """`[(qualified_name, layer, matrix)]`, one entry per distinct matrix
    (`matrix` None for an embedding layer not built yet)."""
    found, seen = [], set()
    for qualified, layer in _walk_layers(model):
        matrix = _embedding_matrix(layer)
        key = id(layer) if matrix is None else id(matrix)
        if (matrix is not None or _is_unbuilt_embedding(layer)) and key not in seen:
            seen.add(key)
            found.append((qualified, layer, matrix))
    return found


def embedding_candidates(model):
    """Lists the embedding layers of `model` as `"'name' (Class, V x d, variable 'path')"`."""
    return [
        f"'{qualified}' ({type(layer).__name__}, {layer.input_dim} x {layer.output_dim}, not built yet)"
        if matrix is None else
        f"'{qualified}' ({type(layer).__name__}, {matrix.shape[0]} x {matrix.shape[1]}, "
        f"variable '{qualified}/{_short_name(matrix)}')"
        for qualified, layer, matrix in _embedding_layers(model)
    ]


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
            and layers, optionally qualified by the enclosing layers
            (`"backbone/token_embedding"`); or the path/name of an embedding
            layer's variable (`"token_embedding/embeddings"`,
            `"Embedding-Token/embeddings:0"`).

    Returns:
        The 2-D embedding variable (vocabulary x dimension).

    Raises:
        TypeError: If `name` is not a string, or names a layer that has no
            embedding matrix, or a variable that is not an embedding layer's
            matrix.
        ValueError: If nothing matches `name`, or several different
            embeddings do. The message lists the embedding layers that exist.
    """
    layer = find_embedding_layer(model, name)
    if _is_unbuilt_embedding(layer):
        raise ValueError(
            f"Embedding layer '{layer.name}' is not built yet, so it has no matrix. "
            f"Build the model first (`model.build(input_shape)` or call it on a batch)."
        )
    return _embedding_matrix(layer)


def find_embedding_layer(model, name):
    """Returns the embedding layer named by `name` (as in `find_embedding`).

    A variable path names the layer that owns the variable as its embedding
    matrix: the perturbation enters at that layer's lookups.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"`embedding_name` must be a non-empty string naming an embedding "
            f"layer or variable, got {name!r}. {_describe_candidates(model)}"
        )
    layers = [(q, layer) for q, layer in _walk_layers(model) if name in (layer.name, q)]
    if layers:
        matrices = {}
        for qualified, layer in layers:
            if _is_unbuilt_embedding(layer):
                # Its matrix exists from the first step on, where it is found.
                matrices.setdefault(id(layer), (qualified, layer))
                continue
            if _embedding_matrix(layer) is None:
                raise TypeError(
                    f"Layer '{name}' ({type(layer).__name__}) has no embedding "
                    f"matrix (a 2-D `embeddings` variable) to perturb. "
                    f"{_describe_candidates(model)}"
                )
            matrices.setdefault(id(_embedding_matrix(layer)), (qualified, layer))
        if len(matrices) > 1:
            raise ValueError(
                f"Embedding name '{name}' is ambiguous: it matches "
                f"{len(matrices)} layers with different matrices: "
                + ", ".join(f"'{q}'" for q, _ in matrices.values())
                + ". Pass the qualified name of the one to perturb."
            )
        return next(iter(matrices.values()))[1]

    variables = {id(v): v for v in model.weights if name in _variable_names(v)}
    embedding_layers = _embedding_layers(model)
    for qualified, _, matrix in embedding_layers:
        if matrix is not None and name == f"{qualified}/{_short_name(matrix)}":
            variables[id(matrix)] = matrix
    if len(variables) > 1:
        raise ValueError(
            f"Embedding name '{name}' is ambiguous: it matches the variables "
            + ", ".join(f"'{_display_name(v)}'" for v in variables.values())
            + ". Pass the full path of the one to perturb."
        )
    if variables:
        variable = next(iter(variables.values()))
        owner = next((layer for _, layer, matrix in embedding_layers if matrix is variable), None)
        if owner is None:
            raise TypeError(
                f"Variable '{_display_name(variable)}' (shape "
                f"{tuple(variable.shape)}) is not the matrix of an embedding layer, "
                f"so no lookup reads it. {_describe_candidates(model)}"
            )
        return owner
    if not model.built:
        raise ValueError(
            f"No layer named '{name}' in model '{model.name}', which is not built "
            f"yet, so it has no variables to match a path against. Name the "
            f"embedding layer, or build the model first (`model.build(input_shape)` "
            f"or call it on a batch). {_describe_candidates(model)}"
        )
    raise ValueError(
        f"No layer or variable named '{name}' in model '{model.name}'. "
        f"{_describe_candidates(model)}"
    )

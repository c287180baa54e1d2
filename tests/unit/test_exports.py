import tandem


def test_public_surface_is_small_and_importable() -> None:
    assert tandem.__all__ == [
        "Finish",
        "Gateway",
        "GenerationParams",
        "RouteInfo",
        "Runtime",
        "Settings",
        "TandemError",
        "TokenEvent",
        "Turn",
        "__version__",
    ]
    for name in tandem.__all__:
        assert getattr(tandem, name) is not None


def test_import_does_not_load_llama_cpp() -> None:
    import subprocess
    import sys

    code = "import sys, tandem, tandem.server, tandem.cli; print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

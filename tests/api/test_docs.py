"""Offline API docs: /docs and /redoc reference only files the API serves itself (no CDN)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from flipwatch.service.api.docs import ASSET_FILES, ASSETS_URL


def referenced_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)


def test_swagger_ui_page_loads_only_local_assets(client: TestClient):
    response = client.get("/docs")
    assert response.status_code == 200
    urls = referenced_urls(response.text)
    assert f"{ASSETS_URL}/swagger-ui-bundle.js" in urls
    assert f"{ASSETS_URL}/swagger-ui.css" in urls
    assert "/openapi.json" in urls
    assert all(u.startswith("/") for u in urls), urls
    assert "cdn" not in response.text.lower()


def test_redoc_page_loads_only_local_assets_without_google_fonts(client: TestClient):
    response = client.get("/redoc")
    assert response.status_code == 200
    urls = referenced_urls(response.text)
    assert f"{ASSETS_URL}/redoc.standalone.js" in urls
    assert all(u.startswith("/") for u in urls), urls
    assert "fonts.googleapis" not in response.text and "cdn" not in response.text.lower()


def test_docs_assets_are_served_from_the_installed_package(client: TestClient):
    for name in ASSET_FILES:
        response = client.get(f"{ASSETS_URL}/{name}")
        assert response.status_code == 200, name
        assert len(response.content) > 1000, name
    js = client.get(f"{ASSETS_URL}/swagger-ui-bundle.js")
    assert "javascript" in js.headers["content-type"]
    assert b"SwaggerUIBundle" in js.content


def test_docs_pages_are_not_in_the_openapi_document(client: TestClient):
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]

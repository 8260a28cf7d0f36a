"""Admin pages: list, create and edit users, outlets and departments; view the catalog.

Thin handlers: parse the form, call a use case of :mod:`cloudhall.accounts` in one
transaction, then redirect (post/redirect/get) or show the form again with the errors
next to their fields. Disabling a user or resetting their password ends their sessions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from cloudhall import accounts, appkeys
from cloudhall.auth import hash_password
from cloudhall.catalog import ServiceItem
from cloudhall.catalog_io import FORM_LABELS
from cloudhall.errors import Conflict
from cloudhall.http import principal, requires
from cloudhall.identities import ROLE_LABELS, Department, Outlet, Role, User, get_user

ADMIN_LABEL = ROLE_LABELS[Role.ADMIN]
SAVED_MESSAGES = {
    "user": "用户已保存",
    "password": "密码已重置，该用户需重新登录",
    "outlet": "便民服务站已保存",
    "department": "窗口（部门）已保存",
}


def _render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    context = {"role_label": ADMIN_LABEL, "role_labels": ROLE_LABELS, "Role": Role, **context}
    return aiohttp_jinja2.render_template(template, request, context, status=status)


def _path_id(request: web.Request) -> int:
    return int(request.match_info["id"])


def _checkbox(form: MultiDictProxy[Any], name: str) -> bool:
    return form.get(name) in ("on", "1", "true")


def _text(form: MultiDictProxy[Any], name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


@requires(Role.ADMIN)
async def admin_home(request: web.Request) -> web.Response:
    async with request.app[appkeys.DATABASE].transaction() as session:
        users = list(
            await session.scalars(
                select(User)
                .options(selectinload(User.departments), selectinload(User.outlet))
                .order_by(User.role, User.username)
            )
        )
        outlets = list(await session.scalars(select(Outlet).order_by(Outlet.county, Outlet.code)))
        departments = list(
            await session.scalars(select(Department).order_by(Department.county, Department.code))
        )
    saved = SAVED_MESSAGES.get(request.query.get("saved", ""))
    return _render(
        request,
        "admin/home.html",
        {
            "users": users,
            "outlets": outlets,
            "departments": departments,
            "saved": saved,
            "hours_text": accounts.format_hours_text,
        },
    )


# ---- users -------------------------------------------------------------------------------


async def _user_choices(request: web.Request) -> dict[str, Any]:
    async with request.app[appkeys.DATABASE].transaction() as session:
        outlets = list(await session.scalars(select(Outlet).order_by(Outlet.county, Outlet.code)))
        departments = list(
            await session.scalars(select(Department).order_by(Department.county, Department.code))
        )
        counties = await accounts.known_counties(session)
    return {"outlets": outlets, "departments": departments, "counties": counties}


def _user_values(user: User) -> dict[str, Any]:
    return {
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
        "outlet": user.outlet.code if user.outlet else "",
        "county": user.county or "",
        "departments": [d.code for d in user.departments],
        "enabled": user.enabled,
    }


def _user_form_data(form: MultiDictProxy[Any]) -> dict[str, Any]:
    role = _text(form, "role")
    return {
        "username": _text(form, "username"),
        "display_name": _text(form, "display_name"),
        "role": role,
        # Only the fields of the chosen role count: the form shows all of them.
        "outlet": _text(form, "outlet") if role == Role.OUTLET_STAFF.value else "",
        "county": _text(form, "county") if role == Role.SUPERVISOR.value else "",
        "departments": [v for v in form.getall("departments", []) if isinstance(v, str)]
        if role == Role.AGENT.value
        else [],
        "enabled": _checkbox(form, "enabled"),
    }


def _new_password(form: MultiDictProxy[Any]) -> str:
    password = accounts.check_password(_text(form, "password"))
    if password != _text(form, "password_confirm"):
        raise accounts.FieldErrors({"password_confirm": "两次输入的密码不一致"})
    return password


@requires(Role.ADMIN)
async def user_new_form(request: web.Request) -> web.Response:
    values = {
        "username": "",
        "display_name": "",
        "role": Role.OUTLET_STAFF.value,
        "outlet": "",
        "county": "",
        "departments": [],
        "enabled": True,
    }
    return _render(
        request,
        "admin/user_form.html",
        {"user": None, "values": values, "errors": {}, **await _user_choices(request)},
    )


@requires(Role.ADMIN)
async def user_create(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    values = _user_form_data(form)
    try:
        data = accounts.parse_input(accounts.UserInput, values)
        password = _new_password(form)
        password_hash = await asyncio.to_thread(hash_password, password)
        async with request.app[appkeys.DATABASE].transaction() as session:
            user = await accounts.create_user(session, data, password_hash)
    except accounts.FieldErrors as exc:
        errors = exc.fields
        try:  # show the password's problems together with the other fields'
            _new_password(form)
        except accounts.FieldErrors as more:
            errors = {**more.fields, **errors}
        return _render(
            request,
            "admin/user_form.html",
            {"user": None, "values": values, "errors": errors, **await _user_choices(request)},
            status=400,
        )
    raise web.HTTPSeeOther(f"/admin/users/{user.id}?saved=user")


@requires(Role.ADMIN)
async def user_edit_form(request: web.Request) -> web.Response:
    async with request.app[appkeys.DATABASE].transaction() as session:
        user = await get_user(session, _path_id(request))
    return _render(
        request,
        "admin/user_form.html",
        {
            "user": user,
            "values": _user_values(user),
            "errors": {},
            "saved": SAVED_MESSAGES.get(request.query.get("saved", "")),
            **await _user_choices(request),
        },
    )


@requires(Role.ADMIN)
async def user_update(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    user_id = _path_id(request)
    db = request.app[appkeys.DATABASE]
    async with db.transaction() as session:
        user = await get_user(session, user_id)
    values = {**_user_form_data(form), "username": user.username}
    try:
        data = accounts.parse_input(accounts.UserInput, values)
        async with db.transaction() as session:
            was_enabled = (await get_user(session, user_id)).enabled
            user = await accounts.update_user(session, user_id, data, actor_id=principal(request).user_id)
    except (accounts.FieldErrors, Conflict) as exc:
        errors = exc.fields if isinstance(exc, accounts.FieldErrors) else {"form": exc.message}
        return _render(
            request,
            "admin/user_form.html",
            {"user": user, "values": values, "errors": errors, **await _user_choices(request)},
            status=400,
        )
    if was_enabled and not user.enabled:
        await request.app[appkeys.AUTH].logout_user(user_id)
    raise web.HTTPSeeOther(f"/admin/users/{user_id}?saved=user")


@requires(Role.ADMIN)
async def user_password(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    user_id = _path_id(request)
    db = request.app[appkeys.DATABASE]
    try:
        password_hash = await asyncio.to_thread(hash_password, _new_password(form))
        async with db.transaction() as session:
            await accounts.set_password(session, user_id, password_hash)
    except accounts.FieldErrors as exc:
        async with db.transaction() as session:
            user = await get_user(session, user_id)
        return _render(
            request,
            "admin/user_form.html",
            {
                "user": user,
                "values": _user_values(user),
                "errors": exc.fields,
                **await _user_choices(request),
            },
            status=400,
        )
    await request.app[appkeys.AUTH].logout_user(user_id)
    raise web.HTTPSeeOther(f"/admin/users/{user_id}?saved=password")


# ---- outlets -----------------------------------------------------------------------------

OUTLET_FIELDS = ("code", "name", "island", "town", "county", "contact_name", "contact_phone")


def _outlet_form_data(form: MultiDictProxy[Any]) -> dict[str, Any]:
    return {**{name: _text(form, name) for name in OUTLET_FIELDS}, "enabled": _checkbox(form, "enabled")}


@requires(Role.ADMIN)
async def outlet_new_form(request: web.Request) -> web.Response:
    values = {**{name: "" for name in OUTLET_FIELDS}, "enabled": True}
    return _render(request, "admin/outlet_form.html", {"outlet": None, "values": values, "errors": {}})


@requires(Role.ADMIN)
async def outlet_edit_form(request: web.Request) -> web.Response:
    async with request.app[appkeys.DATABASE].transaction() as session:
        outlet = await accounts.get_outlet(session, _path_id(request))
    values = {**{name: getattr(outlet, name) for name in OUTLET_FIELDS}, "enabled": outlet.enabled}
    return _render(
        request,
        "admin/outlet_form.html",
        {
            "outlet": outlet,
            "values": values,
            "errors": {},
            "saved": SAVED_MESSAGES.get(request.query.get("saved", "")),
        },
    )


@requires(Role.ADMIN)
async def outlet_save(request: web.Request) -> web.StreamResponse:
    outlet_id = _path_id(request) if "id" in request.match_info else None
    values = _outlet_form_data(await request.post())
    try:
        data = accounts.parse_input(accounts.OutletInput, values)
        async with request.app[appkeys.DATABASE].transaction() as session:
            outlet = await accounts.save_outlet(session, data, outlet_id)
    except accounts.FieldErrors as exc:
        return _render(
            request,
            "admin/outlet_form.html",
            {"outlet": {"id": outlet_id} if outlet_id else None, "values": values, "errors": exc.fields},
            status=400,
        )
    raise web.HTTPSeeOther(f"/admin/outlets/{outlet.id}?saved=outlet")


# ---- departments -------------------------------------------------------------------------


def _department_form_data(form: MultiDictProxy[Any]) -> dict[str, Any]:
    return {
        "code": _text(form, "code"),
        "name": _text(form, "name"),
        "county": _text(form, "county"),
        "working_hours": _text(form, "working_hours"),
        "enabled": _checkbox(form, "enabled"),
    }


@requires(Role.ADMIN)
async def department_new_form(request: web.Request) -> web.Response:
    values = {
        "code": "",
        "name": "",
        "county": "",
        "enabled": True,
        "working_hours": "tz Asia/Shanghai\nmon-fri 08:30-12:00 14:00-17:30",
    }
    return _render(
        request, "admin/department_form.html", {"department": None, "values": values, "errors": {}}
    )


@requires(Role.ADMIN)
async def department_edit_form(request: web.Request) -> web.Response:
    async with request.app[appkeys.DATABASE].transaction() as session:
        department = await accounts.get_department(session, _path_id(request))
    values = {
        "code": department.code,
        "name": department.name,
        "county": department.county,
        "working_hours": accounts.format_hours_text(department.working_hours or {}),
        "enabled": department.enabled,
    }
    return _render(
        request,
        "admin/department_form.html",
        {
            "department": department,
            "values": values,
            "errors": {},
            "saved": SAVED_MESSAGES.get(request.query.get("saved", "")),
        },
    )


@requires(Role.ADMIN)
async def department_save(request: web.Request) -> web.StreamResponse:
    department_id = _path_id(request) if "id" in request.match_info else None
    values = _department_form_data(await request.post())
    try:
        data = accounts.parse_input(accounts.DepartmentInput, values)
        async with request.app[appkeys.DATABASE].transaction() as session:
            department = await accounts.save_department(session, data, department_id)
    except accounts.FieldErrors as exc:
        return _render(
            request,
            "admin/department_form.html",
            {
                "department": {"id": department_id} if department_id else None,
                "values": values,
                "errors": exc.fields,
            },
            status=400,
        )
    raise web.HTTPSeeOther(f"/admin/departments/{department.id}?saved=department")


# ---- catalog -----------------------------------------------------------------------------


@requires(Role.ADMIN)
async def catalog_list(request: web.Request) -> web.Response:
    async with request.app[appkeys.DATABASE].transaction() as session:
        departments = {d.id: d for d in await session.scalars(select(Department))}
        items = list(
            await session.scalars(select(ServiceItem).order_by(ServiceItem.department_id, ServiceItem.code))
        )
    return _render(
        request,
        "admin/catalog.html",
        {"items": items, "departments": departments, "form_labels": FORM_LABELS},
    )


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/admin", admin_home)
    app.router.add_get("/admin/users/new", user_new_form)
    app.router.add_post("/admin/users/new", user_create)
    app.router.add_get(r"/admin/users/{id:\d+}", user_edit_form)
    app.router.add_post(r"/admin/users/{id:\d+}", user_update)
    app.router.add_post(r"/admin/users/{id:\d+}/password", user_password)
    app.router.add_get("/admin/outlets/new", outlet_new_form)
    app.router.add_post("/admin/outlets/new", outlet_save)
    app.router.add_get(r"/admin/outlets/{id:\d+}", outlet_edit_form)
    app.router.add_post(r"/admin/outlets/{id:\d+}", outlet_save)
    app.router.add_get("/admin/departments/new", department_new_form)
    app.router.add_post("/admin/departments/new", department_save)
    app.router.add_get(r"/admin/departments/{id:\d+}", department_edit_form)
    app.router.add_post(r"/admin/departments/{id:\d+}", department_save)
    app.router.add_get("/admin/catalog", catalog_list)

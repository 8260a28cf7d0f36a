"""Admin pages: users, outlets and departments."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from cloudhall import appkeys
from cloudhall.http import requires
from cloudhall.identities import ROLE_LABELS, Department, Outlet, Role, User


@requires(Role.ADMIN)
@aiohttp_jinja2.template("admin/home.html")
async def admin_home(request: web.Request) -> dict[str, object]:
    async with request.app[appkeys.DATABASE].transaction() as session:
        users = list(
            await session.scalars(
                select(User).options(selectinload(User.departments), selectinload(User.outlet)).order_by(User.username)
            )
        )
        outlets = list(await session.scalars(select(Outlet).order_by(Outlet.code)))
        departments = list(await session.scalars(select(Department).order_by(Department.code)))
    return {"users": users, "outlets": outlets, "departments": departments, "role_labels": ROLE_LABELS, "Role": Role}


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/admin", admin_home)

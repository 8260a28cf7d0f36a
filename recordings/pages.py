"""Supervisor pages: the live wallboard (``/supervisor``).

The wallboard is filled and kept current over Socket.IO (supervisor events, see
docs/protocol.md); the page carries only the supervisor's scope and the names of the
departments and outlets in it (as JSON, through the web shell's ``page_config`` global),
so that live rows can be labelled.
"""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web
from sqlalchemy import select

from cloudhall import appkeys
from cloudhall.http import principal, requires
from cloudhall.identities import Department, Outlet, Role


@requires(Role.SUPERVISOR)
async def wallboard_page(request: web.Request) -> web.Response:
    who = principal(request)
    async with request.app[appkeys.DATABASE].transaction() as session:
        dept_query = select(Department).order_by(Department.county, Department.code)
        outlet_query = select(Outlet).order_by(Outlet.county, Outlet.code)
        if who.county is not None:
            dept_query = dept_query.where(Department.county == who.county)
            outlet_query = outlet_query.where(Outlet.county == who.county)
        departments = {str(d.id): d.name for d in await session.scalars(dept_query)}
        outlets = {str(o.id): {"name": o.name, "island": o.island} for o in await session.scalars(outlet_query)}
    return aiohttp_jinja2.render_template(
        "wallboard.html", request, {"county": who.county, "departments": departments, "outlets": outlets}
    )


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/supervisor", wallboard_page)

"""signalling: callback requests

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 05:16:24.317058
"""

from alembic import op
import sqlalchemy as sa
import cloudhall.db


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('callback_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('outlet_id', sa.Integer(), nullable=False),
    sa.Column('department_id', sa.Integer(), nullable=False),
    sa.Column('service_item_id', sa.Integer(), nullable=True),
    sa.Column('staff_user_id', sa.Integer(), nullable=False),
    sa.Column('applicant', sa.JSON(), nullable=False),
    sa.Column('preferred_time', cloudhall.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', cloudhall.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('handled_by', sa.Integer(), nullable=True),
    sa.Column('session_id', sa.String(length=36), nullable=True),
    sa.Column('updated_at', cloudhall.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['department_id'], ['departments.id'], name=op.f('fk_callback_requests_department_id_departments')),
    sa.ForeignKeyConstraint(['handled_by'], ['users.id'], name=op.f('fk_callback_requests_handled_by_users')),
    sa.ForeignKeyConstraint(['outlet_id'], ['outlets.id'], name=op.f('fk_callback_requests_outlet_id_outlets')),
    sa.ForeignKeyConstraint(['service_item_id'], ['service_items.id'], name=op.f('fk_callback_requests_service_item_id_service_items')),
    sa.ForeignKeyConstraint(['staff_user_id'], ['users.id'], name=op.f('fk_callback_requests_staff_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_callback_requests'))
    )
    with op.batch_alter_table('callback_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_callback_requests_department_id'), ['department_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_callback_requests_outlet_id'), ['outlet_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_callback_requests_status'), ['status'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('callback_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_callback_requests_status'))
        batch_op.drop_index(batch_op.f('ix_callback_requests_outlet_id'))
        batch_op.drop_index(batch_op.f('ix_callback_requests_department_id'))

    op.drop_table('callback_requests')

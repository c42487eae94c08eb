"""The bookstore demo app: authors and books, published to Meteor clients by ``ddp.py``."""

"""Fake of modules/options.py: the settings store behind Settings and config.json.

``Options.data`` holds the saved values; ``data_labels`` the OptionInfo of every option that has
been added so far. An extension's options exist only after its ``on_ui_settings`` callback ran
(at UI build), so before that ``opts.data.get(key, default)`` is the only safe read.
"""

import json

from modules.shared_cmd_options import cmd_opts


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.do_not_save = False
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext
        self.restrict_api = restrict_api

    def link(self, label, url):
        self.comment_before += f"[<a href='{url}' target='_blank'>{label}</a>]"
        return self

    def info(self, info):
        """Add a grey note after the label (HTML)."""
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def html(self, html):
        self.comment_after += html
        return self

    def needs_restart(self):
        self.comment_after += " <span class='info'>(requires restart)</span>"
        return self

    def needs_reload_ui(self):
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self


def options_section(section_identifier, options_dict):
    for info in options_dict.values():
        info.section = tuple(section_identifier[:2])
        if len(section_identifier) == 3:
            info.category_id = section_identifier[2]
    return options_dict


_BUILTIN_FIELDS = {"data_labels", "data", "restricted_opts", "typemap"}


class Options:
    typemap = {int: float}

    def __init__(self, data_labels, restricted_opts):
        self.data_labels = data_labels
        self.data = {k: v.default for k, v in data_labels.items() if not v.do_not_save}
        self.restricted_opts = restricted_opts

    def __setattr__(self, key, value):
        if key in _BUILTIN_FIELDS:
            return super().__setattr__(key, value)
        if self.data is not None and (key in self.data or key in self.data_labels):
            if cmd_opts.freeze_settings:
                raise AssertionError("changing settings is disabled")
            info = self.data_labels.get(key)
            if info is not None and info.do_not_save:
                return None
            self.data[key] = value
            return None
        return super().__setattr__(key, value)

    def __getattr__(self, item):
        # Called only when normal lookup fails: saved value first, then the option's default.
        if item in _BUILTIN_FIELDS:
            return super().__getattribute__(item)
        if self.data is not None and item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        return super().__getattribute__(item)

    def set(self, key, value, is_api=False, run_callbacks=True):
        """Set an option and run its onchange; True when the value changed."""
        old = self.data.get(key, None)
        if old == value:
            return False
        option = self.data_labels[key]
        if option.do_not_save or (is_api and option.restrict_api):
            return False
        setattr(self, key, value)
        if run_callbacks and option.onchange is not None:
            option.onchange()
        return True

    def get_default(self, key):
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default

    def save(self, filename):
        if cmd_opts.freeze_settings:
            raise AssertionError("saving settings is disabled")
        with open(filename, "w", encoding="utf8") as file:
            json.dump(self.data, file, indent=4, ensure_ascii=False)

    def load(self, filename):
        try:
            with open(filename, encoding="utf8") as file:
                self.data = json.load(file)
        except FileNotFoundError:
            self.data = {}

    def onchange(self, key, func, call=True):
        self.data_labels[key].onchange = func
        if call:
            func()

    def reorder(self):
        """Group options by category then section label, as the Settings page shows them."""
        section_categories = {}
        for info in self.data_labels.values():
            section_categories.setdefault(info.section, info.category_id)
        for info in self.data_labels.values():
            info.category_id = section_categories.get(info.section)
        order = {cid: i for i, cid in enumerate(categories.mapping)}

        def sort_key(item):
            info = item[1]
            return order.get(info.category_id, len(order)), info.section[1]

        self.data_labels = dict(sorted(self.data_labels.items(), key=sort_key))

    def cast_value(self, key, value):
        if value is None:
            return None
        default = self.data_labels[key].default
        if default is None:
            default = getattr(self, key, None)
        if default is None:
            return None
        if type(default) is bool and value == "False":
            return False
        return type(default)(value)


class OptionsCategory:
    def __init__(self, id, label):
        self.id = id
        self.label = label


class OptionsCategories:
    def __init__(self):
        self.mapping = {}

    def register_category(self, category_id, label):
        if category_id not in self.mapping:
            self.mapping[category_id] = OptionsCategory(category_id, label)
        return category_id


categories = OptionsCategories()

//! `#[invoker_sdk::function]`: exports a plain Rust function through the invoker's C ABI.
//!
//! The attribute keeps the function as written and adds, beside it, a hidden marker type that
//! implements `invoker_sdk::private::RequestReply` or `Streaming`, plus a registration in the
//! library's function table. All `unsafe` lives in `invoker_sdk::private`; nothing generated
//! here contains any.

#![forbid(unsafe_code)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::{
    FnArg, GenericArgument, ItemFn, Pat, PathArguments, ReturnType, Signature, Type, TypeImplTrait,
    TypeParamBound, parse_macro_input, parse_quote_spanned, spanned::Spanned,
};

const SUPPORTED: &str = "supported signatures: request/reply `fn f([&Context,] [X]) [-> Y | -> Result<Y, E>]` \
where X and Y are payload types (String, numbers, bool, Vec<u8>, Bytes, Json<T>, Form<T>, Message<T>) and Y may be `()`; \
streaming `fn f([&Context,] Input<X>, ...) -> impl Stream<Item = Y>` or `-> impl Stream<Item = Result<Y, E>>`, \
or a tuple of such streams for several outputs; a supplier is a streaming function with no Input";

/// Exports a function from a function library.
///
/// See the `invoker_sdk` crate documentation for the supported signatures.
#[proc_macro_attribute]
pub fn function(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item_fn = parse_macro_input!(item as ItemFn);
    let attr = TokenStream2::from(attr);
    let expanded = expand(attr, &item_fn).unwrap_or_else(|e| {
        let error = e.to_compile_error();
        quote! { #item_fn #error }
    });
    expanded.into()
}

const INIT_SUPPORTED: &str = "an init hook is `fn name(config: &invoker_sdk::Config)` returning nothing or `Result<(), E>` where E: Display";
const SHUTDOWN_SUPPORTED: &str = "a shutdown hook is `fn name()` returning nothing";

/// Marks a library's init hook: `fn(&Config)` or `fn(&Config) -> Result<(), E>`, run once
/// after the invoker loads the library and before any call. An error stops the invoker from
/// serving the library.
#[proc_macro_attribute]
pub fn init(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item_fn = parse_macro_input!(item as ItemFn);
    hook(attr.into(), &item_fn, Hook::Init).into()
}

/// Marks a library's shutdown hook: `fn()`, run once when the invoker exits, after the drain.
#[proc_macro_attribute]
pub fn shutdown(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item_fn = parse_macro_input!(item as ItemFn);
    hook(attr.into(), &item_fn, Hook::Shutdown).into()
}

#[derive(Clone, Copy, PartialEq)]
enum Hook {
    Init,
    Shutdown,
}

fn hook(attr: TokenStream2, item: &ItemFn, kind: Hook) -> TokenStream2 {
    let expanded = expand_hook(attr, item, kind).unwrap_or_else(|e| e.to_compile_error());
    quote! { #item #expanded }
}

fn expand_hook(attr: TokenStream2, item: &ItemFn, kind: Hook) -> syn::Result<TokenStream2> {
    let sig = &item.sig;
    let supported = match kind {
        Hook::Init => INIT_SUPPORTED,
        Hook::Shutdown => SHUTDOWN_SUPPORTED,
    };
    if !attr.is_empty() {
        return err(
            attr.span(),
            format!("this attribute takes no arguments; {supported}"),
        );
    }
    check_plain_fn(sig, supported)?;
    let ident = &sig.ident;
    let names = Names::of(ident);
    let private = quote!(::invoker_sdk::private);
    match kind {
        Hook::Init => {
            let takes_config = sig.inputs.len() == 1
                && matches!(sig.inputs.first(), Some(FnArg::Typed(arg)) if matches!(&*arg.ty, Type::Reference(r) if r.mutability.is_none()));
            if !takes_config {
                return err(sig.inputs.span(), supported);
            }
            // A return type that is not a hook's is reported at the return type.
            let run = quote_spanned!(return_span(&sig.output)=>
                #private::IntoInitResult::into_init_result(#ident(config))
            );
            let name = &names.name;
            Ok(register(
                "INIT_HOOKS",
                &names.upper("__INVOKER_INIT"),
                quote!(InitHook),
                quote!(#private::InitHook {
                    name: #name,
                    run: |config: &::invoker_sdk::Config| {
                        #run
                    },
                }),
            ))
        }
        Hook::Shutdown => {
            if !sig.inputs.is_empty() || !matches!(sig.output, ReturnType::Default) {
                return err(sig.span(), supported);
            }
            Ok(register(
                "SHUTDOWN_HOOKS",
                &names.upper("__INVOKER_SHUTDOWN"),
                quote!(ShutdownHook),
                quote!(#private::ShutdownHook { run: #ident }),
            ))
        }
    }
}

/// The names an exported item is known by: its name as the invoker sees it (`r#type` is
/// `type`), and the identifiers of the generated statics and marker type built from it.
struct Names {
    /// The name without `r#`, as registered in the library's table.
    name: String,
}

impl Names {
    fn of(ident: &syn::Ident) -> Self {
        Names {
            name: ident.to_string().trim_start_matches("r#").to_owned(),
        }
    }

    /// `PREFIX_NAME`, upper-cased: the registration static.
    fn upper(&self, prefix: &str) -> syn::Ident {
        format_ident!("{}_{}", prefix, self.name.to_uppercase())
    }

    /// `PREFIX_name`: the marker type.
    fn marker(&self) -> syn::Ident {
        format_ident!("__InvokerFunction_{}", self.name)
    }
}

/// A hidden static registered in one of the SDK's distributed slices (`FUNCTIONS`,
/// `INIT_HOOKS`, `SHUTDOWN_HOOKS`): how every attribute makes its item known to the library.
fn register(
    slice: &str,
    registration: &syn::Ident,
    ty: TokenStream2,
    value: TokenStream2,
) -> TokenStream2 {
    let private = quote!(::invoker_sdk::private);
    let slice = format_ident!("{}", slice);
    quote! {
        #[#private::linkme::distributed_slice(#private::#slice)]
        #[linkme(crate = #private::linkme)]
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        static #registration: #private::#ty = #value;
    }
}

fn err<T>(span: Span, message: impl std::fmt::Display) -> syn::Result<T> {
    Err(syn::Error::new(span, message))
}

/// Rejects what neither an exported function nor a hook can be: `async`, `unsafe`,
/// `extern "ABI"`, generic (type, lifetime or const parameters, or `impl Trait` arguments),
/// variadic, or a method. `supported` lists what the attribute does take.
fn check_plain_fn(sig: &Signature, supported: &str) -> syn::Result<()> {
    if let Some(token) = sig.asyncness {
        return err(
            token.span,
            format!("`async fn` is not supported; {supported}"),
        );
    }
    if let Some(token) = sig.unsafety {
        return err(
            token.span,
            format!(
                "`unsafe fn` is not supported: the invoker calls the function from safe code; {supported}"
            ),
        );
    }
    if let Some(abi) = &sig.abi {
        let name = abi.name.as_ref().map_or("C".to_owned(), |n| n.value());
        return err(
            abi.span(),
            format!(
                "`extern \"{name}\" fn` is not supported: write a plain Rust `fn`, the SDK generates the C ABI; {supported}"
            ),
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return err(
            sig.generics.span(),
            format!(
                "generic functions are not supported: every type must be concrete; {supported}"
            ),
        );
    }
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(receiver) => {
                return err(
                    receiver.span(),
                    format!("methods (`self`) are not supported, only free functions; {supported}"),
                );
            }
            FnArg::Typed(typed) if matches!(&*typed.ty, Type::ImplTrait(_)) => {
                return err(
                    typed.ty.span(),
                    format!(
                        "`impl Trait` parameters make the function generic and are not supported; {supported}"
                    ),
                );
            }
            FnArg::Typed(_) => {}
        }
    }
    if let Some(variadic) = &sig.variadic {
        return err(
            variadic.span(),
            format!("variadic functions are not supported; {supported}"),
        );
    }
    Ok(())
}

/// Where to report a problem with what a function returns: its return type.
fn return_span(output: &ReturnType) -> Span {
    match output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => Span::call_site(),
    }
}

/// The last path segment's name and its generic arguments, if the type is a path.
fn last_segment(ty: &Type) -> Option<(String, Vec<&Type>)> {
    let Type::Path(path) = ty else { return None };
    let segment = path.path.segments.last()?;
    let args = match &segment.arguments {
        PathArguments::AngleBracketed(args) => args
            .args
            .iter()
            .filter_map(|a| match a {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some((segment.ident.to_string(), args))
}

fn is_unit(ty: &Type) -> bool {
    matches!(ty, Type::Tuple(t) if t.elems.is_empty())
}

/// `Result<Y, E>` (or an alias named `Result`): the `Y`.
fn result_ok_type(ty: &Type) -> Option<&Type> {
    match last_segment(ty) {
        Some((name, args)) if name == "Result" && !args.is_empty() => Some(args[0]),
        _ => None,
    }
}

fn is_context(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => {
            r.mutability.is_none()
                && matches!(last_segment(&r.elem), Some((name, args)) if name == "Context" && args.is_empty())
        }
        _ => false,
    }
}

/// `Input<X>`: the `X`.
fn input_item(ty: &Type) -> Option<&Type> {
    match last_segment(ty) {
        Some((name, args)) if name == "Input" && args.len() == 1 => Some(args[0]),
        _ => None,
    }
}

/// `impl Stream<Item = T>`: the `T`.
fn stream_item(ty: &Type) -> Option<&Type> {
    let Type::ImplTrait(TypeImplTrait { bounds, .. }) = ty else {
        return None;
    };
    bounds.iter().find_map(|bound| {
        let TypeParamBound::Trait(t) = bound else {
            return None;
        };
        let segment = t.path.segments.last()?;
        if segment.ident != "Stream" {
            return None;
        }
        let PathArguments::AngleBracketed(args) = &segment.arguments else {
            return None;
        };
        args.args.iter().find_map(|a| match a {
            GenericArgument::AssocType(assoc) if assoc.ident == "Item" => Some(&assoc.ty),
            _ => None,
        })
    })
}

/// The function with `+ use<>` added to each `impl Stream` it returns (unless it says what
/// it captures). The `&Context` is lent only while the function runs, but its streams are
/// polled after it returns; in edition 2024 an `impl Trait` return type captures every
/// lifetime in scope, so without this a streaming function taking `&Context` could not
/// compile at all. A stream that does borrow the context still fails to compile, at the
/// author's code.
fn without_captures(item: &ItemFn) -> ItemFn {
    let mut item = item.clone();
    if let ReturnType::Type(_, ret) = &mut item.sig.output {
        let outputs: Vec<&mut Type> = match &mut **ret {
            Type::Tuple(t) => t.elems.iter_mut().collect(),
            other => vec![other],
        };
        for output in outputs {
            let span = output.span();
            if let Type::ImplTrait(TypeImplTrait { bounds, .. }) = output
                && !bounds
                    .iter()
                    .any(|b| matches!(b, TypeParamBound::PreciseCapture(_)))
            {
                bounds.push(parse_quote_spanned!(span=> use<>));
            }
        }
    }
    item
}

struct Param<'a> {
    name: String,
    ty: &'a Type,
}

fn expand(attr: TokenStream2, item: &ItemFn) -> syn::Result<TokenStream2> {
    if !attr.is_empty() {
        return err(Span::call_site(), "#[function] takes no arguments");
    }
    let sig = &item.sig;
    check_plain_fn(sig, SUPPORTED)?;
    let mut uses_context = false;
    let mut params = Vec::new();
    // `check_plain_fn` refused receivers: every parameter is typed.
    let typed = sig.inputs.iter().filter_map(|arg| match arg {
        FnArg::Typed(pat_type) => Some(pat_type),
        FnArg::Receiver(_) => None,
    });
    for (i, pat_type) in typed.enumerate() {
        if is_context(&pat_type.ty) {
            if i != 0 {
                return err(
                    pat_type.ty.span(),
                    format!("&Context must be the first parameter; {SUPPORTED}"),
                );
            }
            uses_context = true;
            continue;
        }
        let name = match &*pat_type.pat {
            Pat::Ident(ident) => ident.ident.to_string().trim_start_matches('_').to_owned(),
            _ => format!("in{}", params.len()),
        };
        params.push(Param {
            name: if name.is_empty() {
                format!("in{}", params.len())
            } else {
                name
            },
            ty: &pat_type.ty,
        });
    }
    let streaming_inputs = params.iter().filter(|p| input_item(p.ty).is_some()).count();
    let returns_stream = match &sig.output {
        ReturnType::Type(_, ty) => {
            stream_item(ty).is_some()
                || matches!(&**ty, Type::Tuple(t) if !t.elems.is_empty() && t.elems.iter().all(|e| stream_item(e).is_some()))
        }
        ReturnType::Default => false,
    };
    if streaming_inputs > 0 || returns_stream {
        if streaming_inputs != params.len() {
            return err(
                sig.inputs.span(),
                format!("a streaming function takes only Input<X> parameters; {SUPPORTED}"),
            );
        }
        expand_streaming(item, uses_context, &params)
    } else {
        expand_request_reply(item, uses_context, &params)
    }
}

/// The registration of an exported function in the library's function table.
fn function_registration(
    names: &Names,
    uses_context: bool,
    entry: TokenStream2,
    inputs: TokenStream2,
    outputs: TokenStream2,
    stateful: TokenStream2,
) -> TokenStream2 {
    let private = quote!(::invoker_sdk::private);
    let name = &names.name;
    register(
        "FUNCTIONS",
        &names.upper("__INVOKER_FUNCTION"),
        quote!(FunctionSpec),
        quote!(#private::FunctionSpec {
            name: #name,
            inputs: #inputs,
            outputs: #outputs,
            uses_context: #uses_context,
            entry: #private::Entry::#entry,
            package: (::core::env!("CARGO_PKG_NAME"), ::core::env!("CARGO_PKG_VERSION")),
            stateful: #stateful,
        }),
    )
}

fn expand_request_reply(
    item: &ItemFn,
    uses_context: bool,
    params: &[Param],
) -> syn::Result<TokenStream2> {
    let sig = &item.sig;
    if params.len() > 1 {
        return err(
            sig.inputs.span(),
            format!("a request/reply function takes at most one input; {SUPPORTED}"),
        );
    }
    let ident = &sig.ident;
    let names = Names::of(ident);
    let marker = names.marker();
    let sdk = quote!(::invoker_sdk);
    let private = quote!(::invoker_sdk::private);

    let ctx_arg = uses_context.then(|| quote!(__ctx,));
    let (input_types, input_decl, input_arg, input_port) = match params.first() {
        Some(p) => {
            let ty = p.ty;
            let port = &p.name;
            (
                quote!(<#ty as #sdk::FromPayload>::MEDIA_TYPES),
                quote!(let __arg: #ty = #private::decode(__input)?;),
                quote!(__arg),
                quote!(&[(#port, <#ty as #sdk::FromPayload>::MEDIA_TYPES)]),
            )
        }
        None => (quote!(&[]), quote!(let _ = __input;), quote!(), quote!(&[])),
    };

    // What the function returns: nothing, Y, Result<(), E> or Result<Y, E>.
    let (output_ty, fallible) = match &sig.output {
        ReturnType::Default => (None, false),
        ReturnType::Type(_, ty) if is_unit(ty) => (None, false),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) if is_unit(ok) => (None, true),
            Some(ok) => (Some(ok), true),
            None => (Some(&**ty), false),
        },
    };
    let unwrap = if fallible {
        // An error type that is not `Display` is reported at the return type.
        let fallible = quote_spanned!(return_span(&sig.output)=> #private::fallible(__ret));
        quote!(let __value = #fallible?;)
    } else {
        quote!(let __value = __ret;)
    };
    let (output_types, finish, output_port) = match output_ty {
        Some(ty) => (
            quote!(<#ty as #sdk::IntoPayload>::MEDIA_TYPES),
            quote!(#private::encode::<#ty>(__value, __media_type).map(::core::option::Option::Some)),
            quote!(&[("out", <#ty as #sdk::IntoPayload>::MEDIA_TYPES)]),
        ),
        None => (
            quote!(&[]),
            quote!({
                let () = __value;
                let _ = __media_type;
                ::core::result::Result::Ok(::core::option::Option::None)
            }),
            quote!(&[]),
        ),
    };
    let ctx_param = if uses_context {
        quote!(__ctx)
    } else {
        quote!(_)
    };

    let registration = function_registration(
        &names,
        uses_context,
        quote!(Invoke(#private::invoke_shim::<#marker>)),
        input_port,
        output_port,
        quote!(::core::option::Option::None),
    );
    Ok(quote! {
        #item

        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        struct #marker;

        impl #private::RequestReply for #marker {
            const INPUT_MEDIA_TYPES: &'static [&'static str] = #input_types;
            const OUTPUT_MEDIA_TYPES: &'static [&'static str] = #output_types;

            fn call(
                #ctx_param: &#sdk::Context,
                __input: ::core::option::Option<&#sdk::Payload<'_>>,
                __media_type: &'static str,
            ) -> ::core::result::Result<::core::option::Option<#sdk::Outgoing>, #private::CallError> {
                #input_decl
                let __ret = #ident(#ctx_arg #input_arg);
                #unwrap
                #finish
            }
        }

        #registration
    })
}

fn expand_streaming(
    item: &ItemFn,
    uses_context: bool,
    params: &[Param],
) -> syn::Result<TokenStream2> {
    let sig = &item.sig;
    let ident = &sig.ident;
    let names = Names::of(ident);
    let marker = names.marker();
    let sdk = quote!(::invoker_sdk);
    let private = quote!(::invoker_sdk::private);

    let mut input_ports = Vec::new();
    let mut input_args = Vec::new();
    for (i, p) in params.iter().enumerate() {
        let Some(item_ty) = input_item(p.ty) else {
            return err(p.ty.span(), format!("expected Input<X>; {SUPPORTED}"));
        };
        let port = &p.name;
        input_ports.push(quote!((#port, <#item_ty as #sdk::FromPayload>::MEDIA_TYPES)));
        input_args.push(quote!(__inputs.take::<#item_ty>(#i)));
    }
    let inputs_len = params.len();

    let ReturnType::Type(_, ret) = &sig.output else {
        return err(
            sig.ident.span(),
            format!("a streaming function returns `impl Stream<Item = Y>`; {SUPPORTED}"),
        );
    };
    let outputs: Vec<&Type> = match &**ret {
        Type::Tuple(t) => t.elems.iter().collect(),
        other => vec![other],
    };
    let mut output_ports = Vec::new();
    let mut output_types = Vec::new();
    let mut wraps = Vec::new();
    let bindings: Vec<_> = (0..outputs.len())
        .map(|i| format_ident!("__out{}", i))
        .collect();
    for (i, out) in outputs.iter().enumerate() {
        let Some(item_ty) = stream_item(out) else {
            return err(
                out.span(),
                format!("expected `impl Stream<Item = Y>`; {SUPPORTED}"),
            );
        };
        let binding = &bindings[i];
        let (payload_ty, wrap) = match result_ok_type(item_ty) {
            Some(ok) => (ok, quote!(#private::output_fallible(#binding))),
            None => (item_ty, quote!(#private::output(#binding))),
        };
        let port = if outputs.len() == 1 {
            "out".to_owned()
        } else {
            format!("out{i}")
        };
        output_ports.push(quote!((#port, <#payload_ty as #sdk::IntoPayload>::MEDIA_TYPES)));
        output_types.push(quote!(<#payload_ty as #sdk::IntoPayload>::MEDIA_TYPES));
        wraps.push(wrap);
    }
    let destructure = if matches!(&**ret, Type::Tuple(_)) {
        quote!(let (#(#bindings,)*) = __ret;)
    } else {
        let b = &bindings[0];
        quote!(let #b = __ret;)
    };
    let ctx_arg = uses_context.then(|| quote!(__ctx,));
    let ctx_param = if uses_context {
        quote!(__ctx)
    } else {
        quote!(_)
    };
    let inputs_param = if inputs_len > 0 {
        quote!(__inputs)
    } else {
        quote!(_)
    };
    let item = if uses_context {
        &without_captures(item)
    } else {
        item
    };

    let registration = function_registration(
        &names,
        uses_context,
        quote!(Open(#private::open_shim::<#marker>)),
        quote!(&[#(#input_ports),*]),
        quote!(&[#(#output_ports),*]),
        quote!(::core::option::Option::None),
    );
    Ok(quote! {
        #item

        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        struct #marker;

        impl #private::Streaming for #marker {
            const INPUTS: usize = #inputs_len;
            const OUTPUT_MEDIA_TYPES: &'static [&'static [&'static str]] = &[#(#output_types),*];

            fn open(
                #ctx_param: &#sdk::Context,
                #inputs_param: &mut #private::Inputs,
            ) -> ::core::result::Result<::std::vec::Vec<#private::BoxOutput>, #private::CallError> {
                let __ret = #ident(#ctx_arg #(#input_args),*);
                #destructure
                ::core::result::Result::Ok(::std::vec![#(#wraps),*])
            }
        }

        #registration
    })
}

const STATEFUL_SUPPORTED: &str = "a stateful function is `#[statefun(type = \"namespace/name\", state = [SPEC, ...])] fn f(ctx: &invoker_sdk::statefun::Context, message: T)` returning nothing or `Result<(), E>` where E: Display; T is a StateFun value type (String, i32, i64, f32, f64, bool, Json<T: JsonType>, or a type of `bytes_type!`), and each SPEC a `const` `ValueSpec` (`state` may be left out)";

/// Exports a stateful function (Flink StateFun), served by `invoker statefun`.
///
/// `#[statefun(type = "namespace/name", state = [SPEC, ...])]` on
/// `fn f(ctx: &statefun::Context, message: T)` (returning nothing or `Result<(), E>`). See
/// the `invoker_sdk::statefun` module.
#[proc_macro_attribute]
pub fn statefun(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item_fn = parse_macro_input!(item as ItemFn);
    let expanded = StatefunArgs::parse(attr.into())
        .and_then(|args| expand_statefun(&args, &item_fn))
        .unwrap_or_else(|e| {
            let error = e.to_compile_error();
            quote! { #item_fn #error }
        });
    expanded.into()
}

/// What `#[statefun(...)]` says.
struct StatefunArgs {
    function_type: syn::LitStr,
    state: Vec<syn::Path>,
}

impl StatefunArgs {
    fn parse(attr: TokenStream2) -> syn::Result<StatefunArgs> {
        let mut function_type = None;
        let mut state: Option<Vec<syn::Path>> = None;
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("type") {
                if function_type.is_some() {
                    return Err(meta.error(format!("`type` is given twice; {STATEFUL_SUPPORTED}")));
                }
                let lit: syn::LitStr = meta.value()?.parse()?;
                let value = lit.value();
                let valid = matches!(value.rsplit_once('/'), Some((ns, name)) if !ns.is_empty() && !name.is_empty());
                if !valid {
                    return Err(syn::Error::new(
                        lit.span(),
                        format!(
                            "a StateFun function type is `namespace/name` (e.g. \"example/greeter\"), not \"{value}\""
                        ),
                    ));
                }
                function_type = Some(lit);
                Ok(())
            } else if meta.path.is_ident("state") {
                if state.is_some() {
                    return Err(meta.error(format!("`state` is given twice: list every value spec in one `state = [...]`; {STATEFUL_SUPPORTED}")));
                }
                let array: syn::ExprArray = meta.value()?.parse()?;
                let mut specs: Vec<syn::Path> = Vec::new();
                for element in array.elems {
                    let syn::Expr::Path(path) = element else {
                        return Err(syn::Error::new(
                            element.span(),
                            format!(
                                "`state` lists the `const`s that declare the value specs (`const SEEN: ValueSpec<i32> = ValueSpec::new(\"seen\");`), by name; {STATEFUL_SUPPORTED}"
                            ),
                        ));
                    };
                    let named = |p: &syn::Path| quote!(#p).to_string();
                    if specs.iter().any(|s| named(s) == named(&path.path)) {
                        return Err(syn::Error::new(
                            path.span(),
                            format!(
                                "the value spec `{}` is listed twice: list each spec once",
                                named(&path.path).replace(' ', "")
                            ),
                        ));
                    }
                    specs.push(path.path);
                }
                state = Some(specs);
                Ok(())
            } else {
                Err(meta.error(format!("unknown argument; {STATEFUL_SUPPORTED}")))
            }
        });
        syn::parse::Parser::parse2(parser, attr)?;
        let Some(function_type) = function_type else {
            return err(
                Span::call_site(),
                format!(
                    "the function's StateFun type is missing: add `type = \"namespace/name\"`; {STATEFUL_SUPPORTED}"
                ),
            );
        };
        Ok(StatefunArgs {
            function_type,
            state: state.unwrap_or_default(),
        })
    }
}

/// A message type no StateFun function can take, and what to take instead.
fn unsupported_message(ty: &Type) -> Option<String> {
    if let Type::Reference(_) = ty {
        return Some("a message cannot be borrowed (it does not outlive the call): take an owned type such as String".into());
    }
    let (name, args) = last_segment(ty)?;
    match name.as_str() {
        "Input" => Some("a stateful function takes one message per invocation, not a stream: take the message's type".into()),
        "Vec" | "Bytes" => Some(format!("raw bytes need a typename: declare a bytes type with `invoker_sdk::bytes_type!(pub Blob = \"namespace/Blob\")` and take it instead of `{name}`")),
        "Message" | "Form" => Some(format!("`{name}<T>` is a riff payload type: StateFun messages are typed values (String, i32, i64, f32, f64, bool, Json<T>)")),
        "Option" if !args.is_empty() => Some("a stateful function always gets a message: take its type, not an Option".into()),
        "u32" | "u64" | "u8" | "u16" | "i8" | "i16" | "usize" | "isize" | "u128" | "i128" | "char" | "str" => Some(format!("`{name}` has no StateFun type: take i32 (io.statefun.types/int), i64 (long), f32, f64, bool or String")),
        _ => None,
    }
}

fn expand_statefun(args: &StatefunArgs, item: &ItemFn) -> syn::Result<TokenStream2> {
    let sig = &item.sig;
    check_plain_fn(sig, STATEFUL_SUPPORTED)?;
    let typed: Vec<&syn::PatType> = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(pat_type) => Some(pat_type),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let [ctx, message] = typed.as_slice() else {
        return err(
            sig.inputs.span(),
            format!("a stateful function takes the context and one message; {STATEFUL_SUPPORTED}"),
        );
    };
    if !is_context(&ctx.ty) {
        return err(
            ctx.ty.span(),
            format!(
                "the first parameter is `&invoker_sdk::statefun::Context`; {STATEFUL_SUPPORTED}"
            ),
        );
    }
    let message_ty = &*message.ty;
    if let Some(why) = unsupported_message(message_ty) {
        return err(message_ty.span(), format!("{why}; {STATEFUL_SUPPORTED}"));
    }
    let fallible = match &sig.output {
        ReturnType::Default => false,
        ReturnType::Type(_, ty) if is_unit(ty) => false,
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) if is_unit(ok) => true,
            _ => {
                return err(
                    ty.span(),
                    format!(
                        "a stateful function returns nothing or `Result<(), E>`: it answers by sending (`ctx.send`, `ctx.egress`), not by returning; {STATEFUL_SUPPORTED}"
                    ),
                );
            }
        },
    };
    let ident = &sig.ident;
    let names = Names::of(ident);
    let marker = names.marker();
    let sdk = quote!(::invoker_sdk);
    let private = quote!(::invoker_sdk::private);
    let statefun = quote!(::invoker_sdk::statefun);
    let function_type = &args.function_type;
    let specs = &args.state;
    let finish = if fallible {
        let fallible = quote_spanned!(return_span(&sig.output)=> #private::fallible(__ret));
        quote!(#fallible?;)
    } else {
        quote!(let () = __ret;)
    };
    let spec_table = names.upper("__INVOKER_STATEFUL");
    let registration = function_registration(
        &names,
        true,
        quote!(Invoke(#private::invoke_shim::<#marker>)),
        quote!(&[("message", &[<#message_ty as #statefun::ValueType>::TYPENAME])]),
        quote!(&[]),
        quote!(::core::option::Option::Some(&#spec_table)),
    );
    // A spec's type that is not a value type fails at `ValueSpec::new`, where it is declared.
    Ok(quote! {
        #item

        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        struct #marker;

        impl #private::RequestReply for #marker {
            const INPUT_MEDIA_TYPES: &'static [&'static str] =
                &[<#message_ty as #statefun::ValueType>::TYPENAME];
            const OUTPUT_MEDIA_TYPES: &'static [&'static str] = &[];

            fn call(
                __ctx: &#sdk::Context,
                __input: ::core::option::Option<&#sdk::Payload<'_>>,
                _: &'static str,
            ) -> ::core::result::Result<::core::option::Option<#sdk::Outgoing>, #private::CallError> {
                let __ctx = #statefun::Context::of(__ctx, #function_type)
                    .map_err(#private::CallError::Function)?;
                let __input = __input.ok_or_else(|| {
                    #private::CallError::BadInput("Invoker: a stateful function needs a message".into())
                })?;
                let __arg: #message_ty = #statefun::decode_message(__input.bytes(), __input.media_type())
                    .map_err(#private::CallError::BadInput)?;
                let __ret = #ident(&__ctx, __arg);
                #finish
                ::core::result::Result::Ok(::core::option::Option::None)
            }
        }

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        static #spec_table: #statefun::StatefulSpec = #statefun::StatefulSpec {
            function_type: #function_type,
            values: {
                const VALUES: &[#statefun::RawSpec] = &[#(#specs.raw()),*];
                const _: () = #statefun::check_specs(VALUES);
                const _: () = #statefun::check_typename(#function_type);
                VALUES
            },
        };

        #registration
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    /// The error `#[function]` reports for `item`.
    fn function_error(item: ItemFn) -> String {
        match expand(TokenStream2::new(), &item) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn hook_error(item: ItemFn, kind: Hook) -> String {
        match expand_hook(TokenStream2::new(), &item, kind) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unsupported_functions_say_what_is_supported() {
        let cases: [(ItemFn, &str); 8] = [
            (
                parse_quote!(
                    async fn f(s: String) -> String {
                        s
                    }
                ),
                "`async fn` is not supported",
            ),
            (
                parse_quote!(
                    unsafe fn f(s: String) -> String {
                        s
                    }
                ),
                "`unsafe fn` is not supported",
            ),
            (
                parse_quote!(
                    extern "C" fn f(s: String) -> String {
                        s
                    }
                ),
                "`extern \"C\" fn` is not supported",
            ),
            (
                parse_quote!(
                    extern "system" fn f(s: String) -> String {
                        s
                    }
                ),
                "`extern \"system\" fn` is not supported",
            ),
            (
                parse_quote!(
                    fn f<T>(s: T) -> String {
                        todo!()
                    }
                ),
                "generic functions are not supported",
            ),
            (
                parse_quote!(
                    fn f<'a>(s: &'a str) -> String {
                        todo!()
                    }
                ),
                "generic functions are not supported",
            ),
            (
                parse_quote!(
                    fn f(s: impl Into<String>) -> String {
                        s.into()
                    }
                ),
                "`impl Trait` parameters",
            ),
            (
                parse_quote!(
                    fn f(&self, s: String) -> String {
                        s
                    }
                ),
                "methods (`self`) are not supported",
            ),
        ];
        for (item, expected) in cases {
            let message = function_error(item);
            assert!(message.starts_with(expected), "{message}");
            assert!(message.ends_with(SUPPORTED), "{message}");
        }
    }

    #[test]
    fn misplaced_or_extra_parameters_say_what_is_supported() {
        let cases: [(ItemFn, &str); 3] = [
            (
                parse_quote!(
                    fn f(s: String, ctx: &Context) {}
                ),
                "&Context must be the first parameter",
            ),
            (
                parse_quote!(
                    fn f(a: String, b: String) {}
                ),
                "a request/reply function takes at most one input",
            ),
            (
                parse_quote!(
                    fn f(a: String, b: Input<String>) -> impl Stream<Item = String> {
                        b
                    }
                ),
                "a streaming function takes only Input<X> parameters",
            ),
        ];
        for (item, expected) in cases {
            let message = function_error(item);
            assert!(message.starts_with(expected), "{message}");
            assert!(message.ends_with(SUPPORTED), "{message}");
        }
    }

    #[test]
    fn hooks_share_the_checks() {
        let message = hook_error(
            parse_quote!(
                async fn setup(c: &Config) {}
            ),
            Hook::Init,
        );
        assert_eq!(
            message,
            format!("`async fn` is not supported; {INIT_SUPPORTED}")
        );
        let message = hook_error(
            parse_quote!(
                unsafe fn bye() {}
            ),
            Hook::Shutdown,
        );
        assert!(
            message.starts_with("`unsafe fn` is not supported"),
            "{message}"
        );
        assert!(message.ends_with(SHUTDOWN_SUPPORTED), "{message}");
    }

    #[test]
    fn a_streaming_function_with_context_captures_nothing() {
        let item: ItemFn = parse_quote! {
            fn f(ctx: &Context, words: Input<String>) -> impl Stream<Item = String> { words }
        };
        let expanded = expand(TokenStream2::new(), &item).map(|t| t.to_string());
        let expanded = expanded.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            expanded.contains("-> impl Stream < Item = String > + use < >"),
            "{expanded}"
        );
        // Already explicit, or without a context: left as written.
        let item: ItemFn = parse_quote! {
            fn f(ctx: &Context, words: Input<String>) -> impl Stream<Item = String> + use<> { words }
        };
        let expanded = expand(TokenStream2::new(), &item).map(|t| t.to_string());
        let expanded = expanded.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(expanded.matches("use <").count(), 1, "{expanded}");
        let item: ItemFn = parse_quote! {
            fn f(words: Input<String>) -> impl Stream<Item = String> { words }
        };
        let expanded = expand(TokenStream2::new(), &item).map(|t| t.to_string());
        let expanded = expanded.unwrap_or_else(|e| panic!("{e}"));
        assert!(!expanded.contains("use <"), "{expanded}");
    }

    #[test]
    fn raw_identifiers_are_exported_by_their_plain_name() {
        let items: [ItemFn; 2] = [
            parse_quote!(
                fn r#type(s: String) -> String {
                    s
                }
            ),
            parse_quote!(
                fn r#match(words: Input<String>) -> impl Stream<Item = String> {
                    words
                }
            ),
        ];
        for (item, name) in items.into_iter().zip(["type", "match"]) {
            let expanded = expand(TokenStream2::new(), &item).map(|t| t.to_string());
            let expanded = expanded.unwrap_or_else(|e| panic!("{e}"));
            assert!(
                expanded.contains(&format!("name : \"{name}\"")),
                "{expanded}"
            );
            let upper = name.to_uppercase();
            assert!(
                expanded.contains(&format!("static __INVOKER_FUNCTION_{upper} :")),
                "{expanded}"
            );
        }
        let hook: ItemFn = parse_quote!(
            fn r#loop(config: &Config) {}
        );
        let expanded = expand_hook(TokenStream2::new(), &hook, Hook::Init)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        assert!(
            expanded.contains("static __INVOKER_INIT_LOOP :"),
            "{expanded}"
        );
    }

    fn statefun_error(attr: TokenStream2, item: ItemFn) -> String {
        match StatefunArgs::parse(attr).and_then(|args| expand_statefun(&args, &item)) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn statefun_attribute_mistakes_say_what_to_do() {
        let plain: ItemFn = parse_quote!(
            fn f(ctx: &Context, s: String) {}
        );
        let cases: [(TokenStream2, &str); 6] = [
            (quote!(), "the function's StateFun type is missing"),
            (
                quote!(type = "greeter"),
                "a StateFun function type is `namespace/name`",
            ),
            (
                quote!(type = "example/"),
                "a StateFun function type is `namespace/name`",
            ),
            (
                quote!(type = "example/g", state = [SEEN, SEEN]),
                "the value spec `SEEN` is listed twice: list each spec once",
            ),
            (
                quote!(type = "example/g", state = [SEEN], state = [LAST]),
                "`state` is given twice",
            ),
            (
                quote!(type = "example/g", states = [SEEN]),
                "unknown argument",
            ),
        ];
        for (attr, expected) in cases {
            let message = statefun_error(attr, plain.clone());
            assert!(message.starts_with(expected), "{message}");
        }
        let message = statefun_error(quote!(type = "example/g", state = ["seen"]), plain);
        assert!(message.contains("by name"), "{message}");
    }

    #[test]
    fn unsupported_stateful_signatures_say_what_to_do() {
        let attr = || quote!(type = "example/g");
        let cases: [(ItemFn, &str); 8] = [
            (
                parse_quote!(
                    fn f(ctx: &Context, s: Vec<u8>) {}
                ),
                "raw bytes need a typename: declare a bytes type with `invoker_sdk::bytes_type!",
            ),
            (
                parse_quote!(
                    fn f(ctx: &Context, s: u32) {}
                ),
                "`u32` has no StateFun type",
            ),
            (
                parse_quote!(
                    fn f(ctx: &Context, s: &str) {}
                ),
                "a message cannot be borrowed",
            ),
            (
                parse_quote!(
                    fn f(ctx: &Context, s: Input<String>) {}
                ),
                "a stateful function takes one message per invocation",
            ),
            (
                parse_quote!(
                    fn f(s: String) {}
                ),
                "a stateful function takes the context and one message",
            ),
            (
                parse_quote!(
                    fn f(s: String, ctx: &Context) {}
                ),
                "the first parameter is `&invoker_sdk::statefun::Context`",
            ),
            (
                parse_quote!(
                    fn f(ctx: &Context, s: String) -> String {
                        s
                    }
                ),
                "a stateful function returns nothing or `Result<(), E>`",
            ),
            (
                parse_quote!(
                    async fn f(ctx: &Context, s: String) {}
                ),
                "`async fn` is not supported",
            ),
        ];
        for (item, expected) in cases {
            let message = statefun_error(attr(), item);
            assert!(message.starts_with(expected), "{message}");
            assert!(message.ends_with(STATEFUL_SUPPORTED), "{message}");
        }
    }

    #[test]
    fn a_stateful_function_registers_its_type_and_specs() {
        let item: ItemFn = parse_quote!(
            fn greeter(ctx: &Context, name: String) -> Result<(), String> {
                Ok(())
            }
        );
        let args =
            StatefunArgs::parse(quote!(type = "example/greeter", state = [SEEN, specs::LAST]))
                .unwrap();
        let expanded = expand_statefun(&args, &item).unwrap().to_string();
        assert!(
            expanded.contains("function_type : \"example/greeter\""),
            "{expanded}"
        );
        assert!(
            expanded.contains("SEEN . raw () , specs :: LAST . raw ()"),
            "{expanded}"
        );
        assert!(expanded.contains("check_specs"), "{expanded}");
        assert!(
            expanded.contains("Some (& __INVOKER_STATEFUL_GREETER)"),
            "{expanded}"
        );
    }
}
